import { createLogger, explainStartupFailures, onShutdown } from '@conveyor/service-kit';
import { loadEnv } from './env.js';
import { composeService } from './service.js';

const startup = explainStartupFailures('source-webhook');
const env = loadEnv();
const logger = createLogger('source-webhook', env.LOG_LEVEL);
const service = composeService(env, logger);
onShutdown(service.shutdown, logger);
await service.start();
await service.app.listen({ port: env.PORT, host: env.HOST });
logger.info({ port: env.PORT }, 'source-webhook listening');
startup.started();
