import { EVENTS_STREAM, QUEUES } from '@conveyor/contracts';
import { closeQueue, closeRedis, createQueue, createRedis, explainStartupFailures, logErrors, runStageService, StreamGroupConsumer } from '@conveyor/service-kit';
import { HttpProber } from './adapters/http-prober.js';
import { PrometheusRunMetrics, registerEventsLost, registerQueueDepth } from './adapters/prometheus-metrics.js';
import { RedisHistoryStore } from './adapters/redis-history-store.js';
import { loadEnv } from './env.js';
import { historyRoutes } from './http/server.js';
import { createMonitorHandler } from './jobs/monitor.js';
import { createRunEventHandler, handleEventEntries } from './jobs/run-events.js';

const startup = explainStartupFailures('monitor');
const env = loadEnv();

await runStageService({
  service: 'monitor',
  type: 'monitor',
  queueName: QUEUES.monitor,
  env,
  handler: ({ redis, prefix }) => createMonitorHandler({ prober: new HttpProber(), redis, prefix }),
  // Besides monitor stages: run events become history and metrics, and queue depths are scraped.
  extras: ({ redis, prefix, logger, registry }) => {
    // redis (the worker's): BullMQ and event handling, retrying while Redis is away; blocking: XREADGROUP
    // only; api: HTTP reads and scrapes, failing fast so a request never hangs on a missing Redis.
    const blocking = createRedis(env.REDIS_URL, 'worker');
    const api = createRedis(env.REDIS_URL, 'producer');
    const watched = Object.values(QUEUES).map((name) => createQueue(name, { connection: api, prefix }));
    logErrors(blocking, logger, 'events');
    logErrors(api, logger, 'api');
    watched.forEach((q) => logErrors(q, logger, `queue ${q.name}`));
    const history = new RedisHistoryStore(redis, api, prefix, env.MONITOR_HISTORY_MAX, env.MONITOR_HISTORY_DAYS);
    registerQueueDepth(registry, watched, logger);
    // At least once, in order (one batch at a time); an entry that keeps failing goes to `monitor-events-dead`.
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
      onEntriesLost: registerEventsLost(registry),
      handle: handleEventEntries(createRunEventHandler({ metrics: new PrometheusRunMetrics(registry, env.MONITOR_METRIC_KEYS_MAX), history }), logger),
    });
    return {
      routes: historyRoutes({ history, apiToken: env.CONVEYOR_API_TOKEN }),
      readiness: {
        events: () => {
          if (!events.isRunning()) throw new Error('event consumer not running');
        },
      },
      start: () => events.start(),
      stop: [
        // Within the reader's stop deadline: with Redis away it drops `blocking`, which the step below then closes at once.
        { name: 'events', run: () => events.stop() },
        { name: 'queues', run: () => Promise.all(watched.map((q) => closeQueue(q))) },
        { name: 'redis (events, api)', run: () => Promise.all([blocking, api].map((c) => closeRedis(c))) },
      ],
    };
  },
});
startup.started();
