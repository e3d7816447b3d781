import { resolve } from 'node:path';
import { FsArtifactStore } from '@conveyor/artifacts';
import { QUEUES } from '@conveyor/contracts';
import { cleanAbandonedJobs, guardRedis, resolveBuildUsers } from '@conveyor/runner';
import { createLogger, explainStartupFailures, runStageService, warnIfRedisOpen } from '@conveyor/service-kit';
import { loadEnv } from './env.js';
import { buildJobHandler } from './jobs/build-job.js';

const startup = explainStartupFailures('build');
const env = loadEnv();
const workDir = resolve(env.WORK_DIR);
const usersLog = createLogger('build', env.LOG_LEVEL);
const { users, warning } = await resolveBuildUsers(workDir, env, env.WORKER_CONCURRENCY, (message) => usersLog.warn(message));
let fence: { remove(): Promise<void> } = { remove: async () => undefined };

await runStageService({
  service: 'build',
  type: 'build',
  queueName: QUEUES.build,
  env,
  handler: ({ redis, prefix }) => buildJobHandler({ artifacts: new FsArtifactStore(env.ARTIFACT_DIR), redis, prefix, workDir, users }),
  // After the worker drained: the builds' users are free for another service of this host.
  // The fence comes down only then too: no build runs any more.
  extras: () => ({
    stop: [
      { name: 'build users', run: () => users.close() },
      { name: 'Redis fence', run: () => fence.remove() },
    ],
  }),
  // A build service killed mid-build leaves its shells running: stop them before taking jobs again.
  beforeStart: async ({ logger }) => {
    logger.info(await cleanAbandonedJobs(workDir), 'cleaned up after earlier workers');
    if (warning) logger.warn({ workDir }, warning);
    else logger.info({ workDir }, users.summary);
    const warnIfOpen = () => warnIfRedisOpen(env.REDIS_URL, logger, 'builds');
    fence = await guardRedis({ redisUrl: env.REDIS_URL, mode: env.REDIS_FENCE, uids: users.uids, service: 'build', whose: 'builds', logger, warnIfOpen });
  },
});
startup.started();
