export * from './buildspec.js';
export * from './on-failure.js';
export * from './bash-session.js';
export * from './orphans.js';
export * from './globs.js';
export * from './junit.js';
export * from './codebuild-env.js';
export * from './buildspec-job.js';
export type { BuildUser } from './shell-process.js';
