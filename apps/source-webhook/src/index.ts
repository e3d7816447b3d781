export { composeService } from './service.js';
export { loadEnv, Env } from './env.js';
