import { resolve } from 'node:path';
import { FsArtifactStore } from '@conveyor/artifacts';
import { QUEUES } from '@conveyor/contracts';
import { cleanAbandonedJobs, guardRedis, resolveBuildUsers } from '@conveyor/runner';
import { answersWithoutPassword, createLogger, explainStartupFailures, redisWhereabouts, runStageService } from '@conveyor/service-kit';
import { loadEnv } from './env.js';
import { testJobHandler } from './jobs/test-job.js';

const startup = explainStartupFailures('test-runner');
const env = loadEnv();
const workDir = resolve(env.WORK_DIR);
const usersLog = createLogger('test-runner', env.LOG_LEVEL);
const { users, warning } = await resolveBuildUsers(workDir, env, env.WORKER_CONCURRENCY, (message) => usersLog.warn(message));
let fence: Awaited<ReturnType<typeof guardRedis>> | undefined;
/** The ids this service held when it stopped: a process still running as one keeps the fence up. */
let held: number[] = [];

await runStageService({
  service: 'test-runner',
  type: 'test',
  queueName: QUEUES.test,
  env,
  handler: ({ redis, prefix }) => testJobHandler({ artifacts: new FsArtifactStore(env.ARTIFACT_DIR), redis, prefix, workDir, users }),
  // After the worker drained: the builds' users are free for another service of this host.
  // The fence comes down then too, unless a build outlived its kill: it stays until that process is gone.
  extras: ({ logger }) => ({
    stop: [
      { name: 'build users', run: () => ((held = users.ownIds()), users.close()) },
      {
        name: 'Redis fence',
        run: async () => {
          if ((await fence?.remove(held)) === 'kept') logger.warn("the Redis fence stays up: processes of this service's build users still run (the next service to start removes it once they are gone)");
        },
      },
    ],
  }),
  beforeStart: async ({ logger, redis }) => {
    logger.info(await cleanAbandonedJobs(workDir), 'cleaned up after earlier workers');
    if (warning) logger.warn({ workDir }, warning);
    else logger.info({ workDir }, users.summary);
    fence = await guardRedis({
      where: () => redisWhereabouts(redis),
      mode: env.REDIS_FENCE,
      uids: users.uids,
      service: 'test-runner',
      whose: 'test builds',
      logger,
      answersWithoutPassword: () => answersWithoutPassword(env.REDIS_URL),
    });
  },
});
startup.started();
