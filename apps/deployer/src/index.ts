// Kept light: the launcher imports this package only to stop deployments.
export * from './stop-all.js';
export * from './domain/deployment-record.js';
export type * from './ports.js';
