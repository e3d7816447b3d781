import { resolve } from 'node:path';
import { FsArtifactStore } from '@conveyor/artifacts';
import { QUEUES } from '@conveyor/contracts';
import { cleanAbandonedJobs, resolveBuildUser } from '@conveyor/runner';
import { runStageService } from '@conveyor/service-kit';
import { loadEnv } from './env.js';
import { buildJobHandler } from './jobs/build-job.js';

const env = loadEnv();
const workDir = resolve(env.WORK_DIR);
const { user, warning } = await resolveBuildUser(workDir, env.BUILD_UID, env.BUILD_GID);

await runStageService({
  service: 'build',
  type: 'build',
  queueName: QUEUES.build,
  env,
  handler: ({ redis, prefix }) => buildJobHandler({ artifacts: new FsArtifactStore(env.ARTIFACT_DIR), redis, prefix, workDir, ...(user ? { user } : {}) }),
  // A build service killed mid-build leaves its shells running: stop them before taking jobs again.
  beforeStart: async ({ logger }) => {
    logger.info(await cleanAbandonedJobs(workDir), 'cleaned up after earlier workers');
    if (warning) logger.warn({ workDir }, warning);
  },
});
