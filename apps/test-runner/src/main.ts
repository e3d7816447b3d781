import { FsArtifactStore } from '@conveyor/artifacts';
import { QUEUES } from '@conveyor/contracts';
import { runBuildspecService } from '@conveyor/buildspec-service';
import { explainStartupFailures } from '@conveyor/service-kit';
import { loadEnv } from './env.js';
import { testJobHandler } from './jobs/test-job.js';

const startup = explainStartupFailures('test-runner');
const env = loadEnv();
await runBuildspecService({
  service: 'test-runner',
  type: 'test',
  queueName: QUEUES.test,
  whose: 'test builds',
  env,
  handler: ({ redis, prefix, users, workDir }) => testJobHandler({ artifacts: new FsArtifactStore(env.ARTIFACT_DIR, { maxBytes: env.ARTIFACT_MAX_BYTES }), redis, prefix, workDir, users }),
});
startup.started();
