import { z } from 'zod';
import { PipelineName } from '@conveyor/contracts';
import { bearerAuth, type App } from '@conveyor/service-kit';
import type { HistoryStore } from '../ports.js';

export interface RouteDeps {
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

/** The run history API, added to the stage service's base server. */
export function historyRoutes(deps: RouteDeps): (app: App) => void {
  return (app) => {
    app.get('/api/v1/history', { preHandler: bearerAuth(deps.apiToken), schema: { querystring: HistoryQuery } }, async (request) => {
      const { pipeline, limit } = request.query;
      return { runs: await deps.history.recent({ pipeline, limit }) };
    });
  };
}
