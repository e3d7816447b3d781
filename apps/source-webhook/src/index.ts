export { composeService } from './service.js';
export { loadEnv, Env } from './env.js';
export { Orchestrator } from './orchestrator.js';
export { RedisRunStore } from './adapters/redis-run-store.js';
export { BullJobDispatcher } from './adapters/bull-job-dispatcher.js';
export { ResultsConsumer } from './jobs/results-consumer.js';
export { createRun, pendingJobs, step } from './domain/state-machine.js';
