export * from './procfs.js';
export * from './sockets.js';
export * from './file-lock.js';
