export * from './artifact-store.js';
export * from './fs-artifact-store.js';
export * from './env.js';
