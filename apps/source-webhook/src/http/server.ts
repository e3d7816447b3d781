import type { Redis } from 'ioredis';
import type { ReadableArtifactStore } from '@conveyor/artifacts';
import type { Registry } from '@conveyor/service-kit';
import { bearerAuth, buildBaseServer, parseJsonBody, type App, type Logger } from '@conveyor/service-kit';
import type { Orchestrator } from '../orchestrator.js';
import type { PipelineStore, RunStore } from '../ports.js';
import type { WebhookIntake } from '../webhook-intake.js';
import { pipelineRoutes } from './pipeline-routes.js';
import { runRoutes } from './run-routes.js';
import { webhookRoutes } from './webhook-routes.js';

export interface ServerDeps {
  logger: Logger;
  registry: Registry;
  redis: Redis;
  prefix: string;
  apiToken: string;
  pipelines: PipelineStore;
  runs: RunStore;
  /** Where stages' artifacts are read for download. */
  artifacts: ReadableArtifactStore;
  orchestrator: Orchestrator;
  intake: WebhookIntake;
  readiness: Record<string, () => Promise<void> | void>;
  webhookBodyLimit: number;
  /** Artifact downloads served at once; past it, 503 with Retry-After. */
  artifactDownloadsMax: number;
}

export function buildServer(deps: ServerDeps): App {
  const app = buildBaseServer({ logger: deps.logger, registry: deps.registry, readiness: deps.readiness });
  app.register(async (api) => {
    api.addHook('onRequest', bearerAuth(deps.apiToken));
    // Refusing prototype-poisoning keys by name; a blank body is no body (see parseJsonBody).
    // Only the types its routes take (JSON, and YAML for definitions): fastify's default text/plain parser
    // would hand a definition sent as text to the route, which could only call it malformed (400).
    api.removeAllContentTypeParsers();
    api.addContentTypeParser('application/json', { parseAs: 'string' }, parseJsonBody);
    await api.register(pipelineRoutes(deps));
    await api.register(runRoutes(deps));
  }, { prefix: '/api/v1' });
  app.register(webhookRoutes(deps), { prefix: '/webhooks' });
  return app;
}
