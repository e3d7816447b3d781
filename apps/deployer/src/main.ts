import { resolve } from 'node:path';
import { FsArtifactStore } from '@conveyor/artifacts';
import { QUEUES } from '@conveyor/contracts';
import { explainStartupFailures, guardRedis, runStageService, type Logger } from '@conveyor/service-kit';
import { resolveAppUsers } from './adapters/app-users.js';
import { DeploymentFiles } from './adapters/deployment-files.js';
import { FsDeploymentCatalog } from './adapters/fs-deployment-catalog.js';
import { LocalProcessTarget } from './adapters/local-process-target.js';
import { rotateOutputLogs } from './adapters/output-rotation.js';
import { checkLockTool } from './adapters/pipeline-lock.js';
import { loadEnv } from './env.js';
import { deploymentRoutes } from './http/server.js';
import { createDeployHandler } from './jobs/deploy.js';
import { deployCounter } from './metrics.js';

const OUTPUT_CHECK_MS = 30_000;
/** How often versions left running by deploys that never finished are looked for (and at start-up). */
const SWEEP_MS = 5 * 60_000;

const startup = explainStartupFailures('deployer');
const env = loadEnv();
checkLockTool();
const deployDir = resolve(env.DEPLOY_DIR);
const files = new DeploymentFiles(deployDir);
let local: LocalProcessTarget | undefined;
let log: Logger | undefined;
const { users, warning, notices } = await resolveAppUsers({
  deployDir,
  claimsDir: env.DEPLOY_UID_CLAIMS_DIR,
  ...(env.DEPLOY_UIDS ? { uids: env.DEPLOY_UIDS } : {}),
  maxProcesses: env.DEPLOY_MAX_PROCESSES,
  warn: (data, message) => log?.warn(data, message),
});

// Deployed versions are left running when the deployer stops: they outlive it (the launcher calls stopAllDeployments).
await runStageService({
  service: 'deployer',
  type: 'deploy',
  queueName: QUEUES.deploy,
  env,
  handler: ({ redis, prefix, logger, registry }) => {
    log = logger;
    local = new LocalProcessTarget({
      files,
      artifacts: new FsArtifactStore(env.ARTIFACT_DIR),
      logger,
      stopGraceMs: env.DEPLOY_STOP_GRACE_SECONDS * 1000,
      keepVersions: env.DEPLOY_KEEP_VERSIONS,
      users,
    });
    return createDeployHandler({ targets: [local], redis, prefix, deploys: deployCounter(registry) });
  },
  extras: ({ logger, redis }) => {
    // Deployed commands write their output for as long as they run: keep each log under its limit.
    let rotation: NodeJS.Timeout | undefined;
    let sweeping: NodeJS.Timeout | undefined;
    const sweep = () =>
      local?.sweepLeftovers().catch((err: unknown) => logger.warn({ err }, 'could not look for versions left running'));
    const rotate = () =>
      rotateOutputLogs(files, env.DEPLOY_OUTPUT_MAX_BYTES).then(
        (logs) => logs.length > 0 && logger.info({ logs }, 'rotated deployed output logs'),
        (err: unknown) => logger.warn({ err }, 'could not rotate deployed output logs'),
      );
    return {
      routes: deploymentRoutes({ catalog: new FsDeploymentCatalog(files), apiToken: env.CONVEYOR_API_TOKEN }),
      start: async () => {
        logger.info({ deployDir }, 'deploying local targets into this directory');
        if (warning) logger.warn({ deployDir }, warning);
        else logger.info(users.summary);
        for (const notice of notices ?? []) logger.warn({ deployDir }, notice);
        // Left up when the deployer stops: the versions it started outlive it. A service starting later
        // sweeps it once nothing runs as their users, or takes it over at once (a restarted deployer).
        await guardRedis({ redis, redisUrl: env.REDIS_URL, mode: env.REDIS_FENCE, range: users.range, service: 'deployer', whose: 'deployed versions', logger });
        rotation = setInterval(() => void rotate(), OUTPUT_CHECK_MS);
        rotation.unref();
        // In the background: a pipeline whose deploy is under way is waited for.
        void sweep();
        sweeping = setInterval(() => void sweep(), SWEEP_MS);
        sweeping.unref();
      },
      stop: [{ name: 'log rotation and sweeps', run: () => (clearInterval(rotation), clearInterval(sweeping)) }],
    };
  },
});
startup.started();
