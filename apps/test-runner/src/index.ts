export { testJobHandler, readReports } from './jobs/test-job.js';
export { loadEnv, Env } from './env.js';
