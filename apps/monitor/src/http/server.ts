import type { Registry } from 'prom-client';
import { z } from 'zod';
import { PipelineName } from '@conveyor/contracts';
import { bearerAuth, buildBaseServer, type App, type Logger } from '@conveyor/service-kit';
import type { HistoryStore } from '../ports.js';

export interface ServerDeps {
  logger: Logger;
  registry: Registry;
  readiness: Record<string, () => Promise<void> | void>;
  history: HistoryStore;
  /** CONVEYOR_API_TOKEN; undefined leaves the API open (one-machine use). */
  apiToken?: string;
}

export const HistoryQuery = z
  .object({
    pipeline: PipelineName.optional(),
    limit: z.coerce.number().int().min(1).max(1000).default(50),
  })
  .strict();

/** /healthz, /readyz, /metrics and the run history API. Builds, never listens. */
export function buildServer(deps: ServerDeps): App {
  const app = buildBaseServer({ logger: deps.logger, registry: deps.registry, readiness: deps.readiness });
  app.get('/api/v1/history', { preHandler: bearerAuth(deps.apiToken), schema: { querystring: HistoryQuery } }, async (request) => {
    const { pipeline, limit } = request.query;
    return { runs: await deps.history.recent({ pipeline, limit }) };
  });
  return app;
}
