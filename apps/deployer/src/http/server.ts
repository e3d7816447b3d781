import { bearerAuth, type App } from '@conveyor/service-kit';
import type { DeploymentCatalog } from '../ports.js';

export interface RouteDeps {
  catalog: DeploymentCatalog;
  /** CONVEYOR_API_TOKEN; undefined leaves the API open (one-machine use). */
  apiToken?: string;
}

/** The read-only deployments API, added to the stage service's base server. */
export function deploymentRoutes(deps: RouteDeps): (app: App) => void {
  return (app) => {
    app.get('/api/v1/deployments', { preHandler: bearerAuth(deps.apiToken) }, async () => ({
      deployments: await deps.catalog.list(),
    }));
  };
}
