import type { DeploymentCatalog, DeploymentView } from '../ports.js';
import type { DeploymentFiles } from './deployment-files.js';
import { ownGroupAlive } from './process-group.js';

/** Lists each pipeline's current.json, with whether its process group is still running. */
export class FsDeploymentCatalog implements DeploymentCatalog {
  constructor(private readonly files: DeploymentFiles) {}

  async list(): Promise<DeploymentView[]> {
    const views: DeploymentView[] = [];
    for (const pipeline of await this.files.pipelines()) {
      const rec = await this.files.readCurrent(pipeline);
      if (rec) views.push({ ...rec, running: ownGroupAlive(rec) });
    }
    return views;
  }
}
