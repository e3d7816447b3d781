import { spawnSync } from 'node:child_process';
import { checkLockTool } from '@conveyor/procfs';
import { createLogger, explainStartupFailures, onShutdown } from '@conveyor/service-kit';
import { loadEnv } from './env.js';
import { composeService } from './service.js';

const startup = explainStartupFailures('source-webhook');
const env = loadEnv();
// The Source stage's git writes each mirror holding its lock, as flock's own process (git-source-repository.ts).
checkLockTool('the Source stage');
if (spawnSync('flock', ['--no-fork', '/dev/null', 'true'], { stdio: 'ignore' }).status !== 0) {
  throw new Error('invalid environment: the Source stage needs flock(1) with --no-fork (util-linux 2.38 or later)');
}
const logger = createLogger('source-webhook', env.LOG_LEVEL);
const service = composeService(env, logger);
onShutdown(service.shutdown, logger);
await service.start();
await service.app.listen({ port: env.PORT, host: env.HOST });
logger.info({ port: env.PORT }, 'source-webhook listening');
startup.started();
