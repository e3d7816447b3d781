export * from './redis-server.js';
export * from './git.js';
