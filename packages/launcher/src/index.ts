export * from './stack.js';
export * from './redis.js';
export * from './api-client.js';
export * from './example.js';
