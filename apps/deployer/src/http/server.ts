import type { Registry } from 'prom-client';
import { bearerAuth, buildBaseServer, type App, type Logger } from '@conveyor/service-kit';
import type { DeploymentCatalog } from '../ports.js';

export interface ServerDeps {
  logger: Logger;
  registry: Registry;
  readiness: Record<string, () => Promise<void> | void>;
  catalog: DeploymentCatalog;
  /** CONVEYOR_API_TOKEN; undefined leaves the API open (one-machine use). */
  apiToken?: string;
}

/** /healthz, /readyz, /metrics and the read-only deployments API. Builds, never listens. */
export function buildServer(deps: ServerDeps): App {
  const app = buildBaseServer({ logger: deps.logger, registry: deps.registry, readiness: deps.readiness });
  app.get('/api/v1/deployments', { preHandler: bearerAuth(deps.apiToken) }, async () => ({
    deployments: await deps.catalog.list(),
  }));
  return app;
}
