import { EVENTS_STREAM, QUEUES } from '@conveyor/contracts';
import { closeQueue, closeRedis, closeWorker, createLogger, createQueue, createRedis, createRegistry, countStageJobs, createStageWorker, logErrors, onShutdown, readinessChecks, StreamGroupConsumer } from '@conveyor/service-kit';
import { HttpProber } from './adapters/http-prober.js';
import { PrometheusRunMetrics, registerQueueDepth } from './adapters/prometheus-metrics.js';
import { RedisHistoryStore } from './adapters/redis-history-store.js';
import { loadEnv } from './env.js';
import { buildServer } from './http/server.js';
import { createMonitorHandler } from './jobs/monitor.js';
import { createRunEventHandler, handleEventEntries } from './jobs/run-events.js';

const env = loadEnv();
const logger = createLogger('monitor', env.LOG_LEVEL);
const prefix = env.QUEUE_PREFIX;
// worker: BullMQ and event handling (retries while Redis is away); blocking: XREADGROUP only;
// api: HTTP reads and scrapes, failing fast so a request never hangs on a missing Redis.
const redis = createRedis(env.REDIS_URL, 'worker');
const blocking = createRedis(env.REDIS_URL, 'worker');
const api = createRedis(env.REDIS_URL, 'producer');
const watched = Object.values(QUEUES).map((name) => createQueue(name, { connection: api, prefix }));
logErrors(redis, logger, 'main');
logErrors(blocking, logger, 'events');
logErrors(api, logger, 'api');
watched.forEach((q) => logErrors(q, logger, `queue ${q.name}`));

const registry = createRegistry('monitor');
const history = new RedisHistoryStore(redis, api, prefix, env.MONITOR_HISTORY_MAX);
registerQueueDepth(registry, watched, logger);

const worker = createStageWorker({
  type: 'monitor',
  queueName: QUEUES.monitor,
  connection: redis,
  prefix,
  handler: createMonitorHandler({ prober: new HttpProber(), redis, prefix }),
  logger,
  concurrency: env.WORKER_CONCURRENCY,
  lockDuration: env.WORKER_LOCK_MS,
  stalledInterval: env.WORKER_STALLED_MS,
});
countStageJobs(worker, registry, 'monitor');
// At least once, in order (one batch at a time); an entry that keeps failing goes to `events-dead`.
const events = new StreamGroupConsumer({
  redis: blocking,
  streams: [`${prefix}:${EVENTS_STREAM}`],
  group: 'monitor',
  name: 'run events',
  deadLetterStream: `${prefix}:monitor-events-dead`,
  logger,
  batch: 100,
  maxInFlight: 1,
  claimIdleMs: env.EVENTS_CLAIM_IDLE_MS,
  handle: handleEventEntries(createRunEventHandler({ metrics: new PrometheusRunMetrics(registry), history }), logger),
});
await events.start();

const app = buildServer({
  logger,
  registry,
  readiness: {
    ...readinessChecks(redis, worker),
    events: () => {
      if (!events.isRunning()) throw new Error('event consumer not running');
    },
  },
  history,
  apiToken: env.CONVEYOR_API_TOKEN,
});

onShutdown(
  [
    { name: 'http', run: () => app.close() },
    { name: 'workers', run: () => Promise.all([closeWorker(worker, env.SHUTDOWN_DRAIN_SECONDS * 1000, logger), events.stop()]) },
    { name: 'queues', run: () => Promise.all(watched.map((q) => closeQueue(q))) },
    { name: 'redis', run: () => Promise.all([redis, blocking, api].map((c) => closeRedis(c))) },
  ],
  logger,
);

await app.listen({ host: env.HOST, port: env.PORT });
logger.info({ host: env.HOST, port: env.PORT, prefix }, 'monitor listening');
