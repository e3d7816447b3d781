import { resolve } from 'node:path';
import { cleanAbandonedJobs, resolveBuildUsers, type BuildUserConfig, type BuildUsers } from '@conveyor/runner';
import { createLogger, guardRedis, runStageService, type BaseEnv, type RedisFenceMode, type RedisGuard, type StageHandler, type StageServiceDeps } from '@conveyor/service-kit';

export interface BuildspecServiceOptions<T extends 'build' | 'test'> {
  service: string;
  type: T;
  queueName: string;
  /** Whose code the service runs, for messages ("builds", "test builds"). */
  whose: string;
  env: BaseEnv & BuildUserConfig & { PORT: number; WORK_DIR: string; REDIS_FENCE: RedisFenceMode };
  handler: (deps: StageServiceDeps & { users: BuildUsers; workDir: string }) => StageHandler<T>;
}

/**
 * A stage service that runs buildspecs (build, test-runner): its builds' users (ADR 0008), what a killed
 * predecessor left cleaned up before it takes a job, Redis fenced off from the builds (ADR 0009), and on
 * shutdown, once its builds have drained, the users given back and the fence taken down.
 */
export async function runBuildspecService<T extends 'build' | 'test'>(opts: BuildspecServiceOptions<T>): Promise<void> {
  const { env, whose } = opts;
  const workDir = resolve(env.WORK_DIR);
  const usersLog = createLogger(opts.service, env.LOG_LEVEL);
  const { users, warning } = await resolveBuildUsers(workDir, env, env.WORKER_CONCURRENCY, (message) => usersLog.warn(message));
  let fence: RedisGuard | undefined;
  await runStageService({
    service: opts.service,
    type: opts.type,
    queueName: opts.queueName,
    env,
    handler: (deps) => opts.handler({ ...deps, users, workDir }),
    extras: ({ logger }) => ({
      stop: [
        {
          // After the worker drained: the builds' users are free for another service of this host. The fence
          // comes down then too, unless a process of one of the ids this service held outlived its kill.
          name: 'build users and Redis fence',
          run: async () => {
            const held = users.ownIds();
            await users.close();
            if ((await fence?.remove(held)) === 'kept') logger.warn(`the Redis fence stays up: processes of ${whose}' users still run (a service starting later takes it over, or removes it once they are gone)`);
          },
        },
      ],
    }),
    // A service killed mid-build leaves its shells running: stop them before taking jobs again.
    beforeStart: async ({ logger, redis }) => {
      logger.info(await cleanAbandonedJobs(workDir), 'cleaned up after earlier workers');
      if (warning) logger.warn({ workDir }, warning);
      else logger.info({ workDir }, users.summary);
      fence = await guardRedis({ redis, redisUrl: env.REDIS_URL, mode: env.REDIS_FENCE, range: users.range, service: opts.service, whose, logger });
    },
  });
}
