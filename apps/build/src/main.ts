import { FsArtifactStore } from '@conveyor/artifacts';
import { QUEUES } from '@conveyor/contracts';
import { runBuildspecService } from '@conveyor/buildspec-service';
import { explainStartupFailures } from '@conveyor/service-kit';
import { loadEnv } from './env.js';
import { buildJobHandler } from './jobs/build-job.js';

const startup = explainStartupFailures('build');
const env = loadEnv();
await runBuildspecService({
  service: 'build',
  type: 'build',
  queueName: QUEUES.build,
  whose: 'builds',
  env,
  handler: ({ redis, prefix, users, workDir }) => buildJobHandler({ artifacts: new FsArtifactStore(env.ARTIFACT_DIR, { maxBytes: env.ARTIFACT_MAX_BYTES }), redis, prefix, workDir, users }),
});
startup.started();
