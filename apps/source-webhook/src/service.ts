import { randomUUID } from 'node:crypto';
import { FsArtifactStore } from '@conveyor/artifacts';
import { QUEUES } from '@conveyor/contracts';
import { closeQueue, closeRedis, closeWorker, createQueue, createRedis, createRegistry, createStageWorker, logErrors, waitReady, within, type Logger, type ShutdownStep } from '@conveyor/service-kit';
import { BullJobDispatcher } from './adapters/bull-job-dispatcher.js';
import { GitSourceRepository } from './adapters/git-source-repository.js';
import { RedisPipelineStore } from './adapters/redis-pipeline-store.js';
import { RedisRunStore } from './adapters/redis-run-store.js';
import type { Env } from './env.js';
import { buildServer } from './http/server.js';
import { ResultsConsumer } from './jobs/results-consumer.js';
import { sourceJobHandler } from './jobs/source-job.js';
import { Orchestrator } from './orchestrator.js';
import { chainedTimer, createRetention } from './retention.js';
import { WebhookIntake } from './webhook-intake.js';

/** Wires the control plane: stores, queues, orchestrator, workers, HTTP. Listening is the caller's. */
export function composeService(env: Env, logger: Logger) {
  const prefix = env.QUEUE_PREFIX;
  // Producer connection fails fast (HTTP answers 503); worker connection blocks and retries.
  const redis = createRedis(env.REDIS_URL, 'producer');
  const workerRedis = createRedis(env.REDIS_URL, 'worker');
  // Adds and stage logs (nothing blocks on it): commands issued together share round trips.
  const queueRedis = createRedis(env.REDIS_URL, 'worker', { enableAutoPipelining: true });
  const queues = new Map(Object.values(QUEUES).map((name) => [name, createQueue(name, { connection: queueRedis, prefix })]));
  const runs = new RedisRunStore(redis, prefix);
  const pipelines = new RedisPipelineStore(redis, prefix);
  const orchestrator = new Orchestrator({ runs, jobs: new BullJobDispatcher(queues, { redis: queueRedis, prefix }), logger, newId: randomUUID });
  const intake = new WebhookIntake({ pipelines, runs, orchestrator, logger });
  const artifacts = new FsArtifactStore(env.ARTIFACT_DIR, { maxBytes: env.ARTIFACT_MAX_BYTES });
  const repository = new GitSourceRepository(env.SOURCE_CACHE_DIR, artifacts);

  const sourceWorker = createStageWorker({
    type: 'source',
    queueName: QUEUES.source,
    connection: workerRedis,
    prefix,
    handler: sourceJobHandler({ repository, redis: queueRedis, prefix }),
    logger,
    concurrency: env.WORKER_CONCURRENCY,
    lockDuration: env.WORKER_LOCK_MS,
    stalledInterval: env.WORKER_STALLED_MS,
  });
  const resultsRedis = createRedis(env.REDIS_URL, 'worker');
  for (const [name, client] of Object.entries({ redis, workerRedis, queueRedis, resultsRedis })) logErrors(client, logger, name);
  const results = new ResultsConsumer({ redis: resultsRedis, prefix, orchestrator, logger, claimIdleMs: env.RESULTS_CLAIM_IDLE_MS });

  // Passes are chained, never overlapping.
  const reconciler = chainedTimer(
    () => orchestrator.reconcile().then((r) => r.settled > 0 && logger.info(r, 'reconciled runs'), (err) => logger.warn({ err }, 'reconcile failed')),
    env.RECONCILE_INTERVAL_MS,
  );
  const retention = createRetention({ redis, prefix, runs, artifacts, logger }, env);

  const app = buildServer({
    logger,
    registry: createRegistry('source-webhook'),
    redis,
    prefix,
    apiToken: env.CONVEYOR_API_TOKEN,
    pipelines,
    runs,
    artifacts,
    orchestrator,
    intake,
    webhookBodyLimit: env.WEBHOOK_BODY_LIMIT,
    artifactDownloadsMax: env.ARTIFACT_DOWNLOADS_MAX,
    readiness: {
      redis: async () => void (await within(redis.ping(), 1000, 'redis')),
      workers: () => {
        if (!sourceWorker.isRunning() || !results.isRunning()) throw new Error('workers not running');
      },
    },
  });

  const shutdown: ShutdownStep[] = [
    { name: 'http', run: () => app.close() },
    { name: 'reconciler', run: () => (void reconciler.stop(), orchestrator.close()) },
    { name: 'retention', run: () => within(retention.stop(), 5000, 'retention pass').catch(() => undefined) },
    { name: 'workers', run: () => Promise.all([closeWorker(sourceWorker, env.SHUTDOWN_DRAIN_SECONDS * 1000, logger), within(results.stop(), 5000, 'results consumer').catch(() => undefined)]) },
    { name: 'queues', run: () => Promise.all([...queues.values()].map((q) => closeQueue(q))) },
    { name: 'redis', run: () => Promise.all([redis, workerRedis, queueRedis, resultsRedis].map((c) => closeRedis(c))) },
  ];
  /** Waits for Redis (the producer connection fails fast, so it must be up), then settles what a crash left behind. */
  const start = async () => {
    await waitReady(redis, 30_000);
    await results.start();
    await orchestrator.reconcile().catch((err) => logger.warn({ err }, 'start-up reconcile failed'));
    reconciler.start();
    retention.start();
  };
  return { app, orchestrator, pipelines, runs, start, shutdown };
}
