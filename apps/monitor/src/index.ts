export * from './domain/history.js';
export * from './domain/verify.js';
export type * from './ports.js';
