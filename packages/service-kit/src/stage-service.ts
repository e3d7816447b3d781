import type { Worker } from 'bullmq';
import { Counter, Histogram } from 'prom-client';
import type { StageJob, StageResult } from '@conveyor/contracts';
import type { BaseEnv } from './env.js';
import { buildBaseServer, type App } from './http.js';
import { createLogger, type Logger } from './logger.js';
import { createRegistry, type Registry } from './metrics.js';
import { createRedis, waitReady, type Redis } from './redis.js';
import { onShutdown, type ShutdownStep } from './shutdown.js';
import { createStageWorker, type StageHandler } from './stage-worker.js';
import { closeRedis, closeWorker, logErrors, readinessChecks } from './lifecycle.js';

export interface StageServiceDeps {
  redis: Redis;
  prefix: string;
  logger: Logger;
  registry: Registry;
}

export interface StageServiceOptions<T extends StageJob['type']> {
  service: string;
  type: T;
  queueName: string;
  env: BaseEnv & { PORT: number };
  handler: (deps: StageServiceDeps) => StageHandler<T>;
  /** Runs before the worker starts taking jobs (e.g. reaping what a crashed predecessor left). */
  beforeStart?: (deps: StageServiceDeps) => Promise<void>;
  /** What this service has beyond its stage worker. */
  extras?: (deps: StageServiceDeps) => StageServiceExtras;
}

/** A stage service's own parts: API routes, readiness checks, background work with its own connections. */
export interface StageServiceExtras {
  /** Adds the service's routes to the base server (/healthz, /readyz, /metrics). */
  routes?: (app: App) => void;
  /** More checks for /readyz, next to Redis and the worker. */
  readiness?: Record<string, () => Promise<void> | void>;
  /** Starts background work once Redis is ready, before the worker takes jobs. */
  start?: () => Promise<void>;
  /** Shutdown steps run after the worker has drained and before its Redis connection closes. */
  stop?: ShutdownStep[];
}

/**
 * Every stage service's job metrics: `conveyor_stage_jobs_total` and
 * `conveyor_stage_job_duration_seconds`, by stage type and result, from the StageResult each job
 * completes with.
 */
function countStageJobs(worker: Worker, registry: Registry, type: StageJob['type']): void {
  const jobs = new Counter({ name: 'conveyor_stage_jobs_total', help: 'Stage jobs finished, by result', labelNames: ['type', 'status'], registers: [registry] });
  const durations = new Histogram({
    name: 'conveyor_stage_job_duration_seconds',
    help: 'Time from a stage job starting to its result',
    labelNames: ['type', 'status'],
    buckets: [0.1, 0.5, 1, 2, 5, 10, 30, 60, 300, 1800],
    registers: [registry],
  });
  worker.on('completed', (_job, result: StageResult | undefined) => {
    if (!result) return;
    jobs.inc({ type, status: result.status });
    durations.observe({ type, status: result.status }, (Date.parse(result.finishedAt) - Date.parse(result.startedAt)) / 1000);
  });
}

/**
 * The composition every stage service shares: one worker connection, the stage worker, job metrics,
 * an HTTP server with /healthz /readyz /metrics (and the service's own routes), and ordered shutdown:
 * HTTP, then the worker (drained), then the service's own parts, then Redis.
 */
export function composeStageService<T extends StageJob['type']>(opts: StageServiceOptions<T>) {
  const { env } = opts;
  const logger = createLogger(opts.service, env.LOG_LEVEL);
  const redis = createRedis(env.REDIS_URL, 'worker');
  const registry = createRegistry(opts.service);
  const deps: StageServiceDeps = { redis, prefix: env.QUEUE_PREFIX, logger, registry };
  const worker = createStageWorker({
    type: opts.type,
    queueName: opts.queueName,
    connection: redis,
    prefix: env.QUEUE_PREFIX,
    handler: opts.handler(deps),
    logger,
    concurrency: env.WORKER_CONCURRENCY,
    lockDuration: env.WORKER_LOCK_MS,
    stalledInterval: env.WORKER_STALLED_MS,
    autorun: false,
  });
  countStageJobs(worker, registry, opts.type);
  const extras = opts.extras?.(deps) ?? {};
  const app: App = buildBaseServer({
    logger,
    registry,
    readiness: { ...readinessChecks(redis, worker), ...extras.readiness },
  });
  extras.routes?.(app);
  logErrors(redis, logger, 'worker');
  const shutdown: ShutdownStep[] = [
    { name: 'http', run: () => app.close() },
    { name: 'worker', run: () => closeWorker(worker, env.SHUTDOWN_DRAIN_SECONDS * 1000, logger) },
    ...(extras.stop ?? []),
    { name: 'redis', run: () => closeRedis(redis) },
  ];
  return { app, worker, deps, logger, shutdown, start: extras.start ?? (async () => undefined) };
}

/** Composes, starts and serves a stage service until SIGTERM. */
export async function runStageService<T extends StageJob['type']>(opts: StageServiceOptions<T>): Promise<void> {
  const service = composeStageService(opts);
  onShutdown(service.shutdown, service.logger);
  await waitReady(service.deps.redis, 30_000);
  await opts.beforeStart?.(service.deps);
  await service.start();
  void service.worker.run().catch((err) => service.logger.error({ err }, 'worker stopped'));
  await service.app.listen({ port: opts.env.PORT, host: opts.env.HOST });
  service.logger.info({ port: opts.env.PORT, queue: opts.queueName }, `${opts.service} listening`);
}
