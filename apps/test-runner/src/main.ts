import { resolve } from 'node:path';
import { FsArtifactStore } from '@conveyor/artifacts';
import { QUEUES } from '@conveyor/contracts';
import { cleanAbandonedJobs, resolveBuildUser } from '@conveyor/runner';
import { runStageService } from '@conveyor/service-kit';
import { loadEnv } from './env.js';
import { testJobHandler } from './jobs/test-job.js';

const env = loadEnv();
const workDir = resolve(env.WORK_DIR);
const { user, warning } = await resolveBuildUser(workDir, env.BUILD_UID, env.BUILD_GID);

await runStageService({
  service: 'test-runner',
  type: 'test',
  queueName: QUEUES.test,
  env,
  handler: ({ redis, prefix }) => testJobHandler({ artifacts: new FsArtifactStore(env.ARTIFACT_DIR), redis, prefix, workDir, ...(user ? { user } : {}) }),
  beforeStart: async ({ logger }) => {
    logger.info(await cleanAbandonedJobs(workDir), 'cleaned up after earlier workers');
    if (warning) logger.warn({ workDir }, warning);
  },
});
