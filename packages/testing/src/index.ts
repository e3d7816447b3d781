export * from './redis-server.js';
export * from './git.js';
export * from './stage-harness.js';
export * from './service-process.js';
export * from './cancel-notices.js';
export * from './junit.js';
export * from './files.js';
