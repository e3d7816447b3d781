export * from './procfs.js';
export * from './file-lock.js';
