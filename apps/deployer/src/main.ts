import { resolve } from 'node:path';
import { FsArtifactStore } from '@conveyor/artifacts';
import { QUEUES } from '@conveyor/contracts';
import { closeRedis, closeWorker, createLogger, createRedis, createRegistry, countStageJobs, createStageWorker, logErrors, onShutdown, readinessChecks } from '@conveyor/service-kit';
import { DeploymentFiles } from './adapters/deployment-files.js';
import { FsDeploymentCatalog } from './adapters/fs-deployment-catalog.js';
import { LocalProcessTarget } from './adapters/local-process-target.js';
import { checkLockTool } from './adapters/pipeline-lock.js';
import { loadEnv } from './env.js';
import { buildServer } from './http/server.js';
import { createDeployHandler } from './jobs/deploy.js';
import { deployCounter } from './metrics.js';

const env = loadEnv();
const logger = createLogger('deployer', env.LOG_LEVEL);
const prefix = env.QUEUE_PREFIX;
const redis = createRedis(env.REDIS_URL, 'worker');
logErrors(redis, logger, 'main');
checkLockTool();

const deployDir = resolve(env.DEPLOY_DIR);
const files = new DeploymentFiles(deployDir);
const local = new LocalProcessTarget({
  files,
  artifacts: new FsArtifactStore(env.ARTIFACT_DIR),
  logger,
  stopGraceMs: env.DEPLOY_STOP_GRACE_SECONDS * 1000,
  keepVersions: env.DEPLOY_KEEP_VERSIONS,
});

const registry = createRegistry('deployer');
const worker = createStageWorker({
  type: 'deploy',
  queueName: QUEUES.deploy,
  connection: redis,
  prefix,
  handler: createDeployHandler({ targets: [local], redis, prefix, deploys: deployCounter(registry) }),
  logger,
  concurrency: env.WORKER_CONCURRENCY,
  lockDuration: env.WORKER_LOCK_MS,
  stalledInterval: env.WORKER_STALLED_MS,
});
countStageJobs(worker, registry, 'deploy');

const app = buildServer({
  logger,
  registry,
  readiness: readinessChecks(redis, worker),
  catalog: new FsDeploymentCatalog(files),
  apiToken: env.CONVEYOR_API_TOKEN,
});

// Deployed versions are left running: they outlive the deployer (the launcher calls stopAllDeployments).
onShutdown(
  [
    { name: 'http', run: () => app.close() },
    { name: 'workers', run: () => closeWorker(worker, env.SHUTDOWN_DRAIN_SECONDS * 1000, logger) },
    { name: 'redis', run: () => closeRedis(redis) },
  ],
  logger,
);

await app.listen({ host: env.HOST, port: env.PORT });
logger.info({ host: env.HOST, port: env.PORT, deployDir, prefix }, 'deployer listening');
