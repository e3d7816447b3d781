export { buildJobHandler } from './jobs/build-job.js';
export { loadEnv, Env } from './env.js';
