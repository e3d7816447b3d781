import { checkLockTool } from '@conveyor/procfs';
import { createLogger, explainStartupFailures, onShutdown } from '@conveyor/service-kit';
import { loadEnv } from './env.js';
import { composeService } from './service.js';

const startup = explainStartupFailures('source-webhook');
const env = loadEnv();
// The Source stage's git writes each mirror holding its lock (git-source-repository.ts).
checkLockTool('the Source stage');
const logger = createLogger('source-webhook', env.LOG_LEVEL);
const service = composeService(env, logger);
onShutdown(service.shutdown, logger);
await service.start();
await service.app.listen({ port: env.PORT, host: env.HOST });
logger.info({ port: env.PORT }, 'source-webhook listening');
startup.started();
