export * from './procfs.js';
