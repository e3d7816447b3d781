export * from './glob-error.js';
export * from './glob-matcher.js';
