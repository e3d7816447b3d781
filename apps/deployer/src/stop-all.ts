import { readdir } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { killUserProcesses } from '@conveyor/runner';
import { CLAIMS_DIR } from './adapters/app-users.js';
import { DeploymentFiles } from './adapters/deployment-files.js';
import { ownGroupAlive, stopGroup } from './adapters/process-group.js';
import type { DeploymentRecord } from './domain/deployment-record.js';

export interface StoppedDeployment {
  pipeline: string;
  runId: string;
  attempt: number;
  pid: number;
  result: Awaited<ReturnType<typeof stopGroup>>;
}

/**
 * Stops every process recorded under `deployDir` (each pipeline's current version, and any version a
 * crashed deploy left running), SIGTERM then SIGKILL after `graceMs`, then (as root) whatever still runs
 * as a version's own user. For the launcher's shutdown: the deployer itself never stops deployments
 * when it stops. Records stay on disk.
 */
export async function stopAllDeployments(deployDir: string, graceMs = 10_000): Promise<StoppedDeployment[]> {
  const files = new DeploymentFiles(resolve(deployDir));
  const byGroup = new Map<number, DeploymentRecord>();
  for (const rec of await files.allRecords()) byGroup.set(rec.pgid, rec);
  const stopped = await Promise.all(
    [...byGroup.values()].map(async (rec): Promise<StoppedDeployment | undefined> => {
      if (!ownGroupAlive(rec.pgid, rec.procStart)) return undefined;
      const result = await stopGroup(rec.pgid, graceMs);
      return { pipeline: rec.pipeline, runId: rec.runId, attempt: rec.attempt, pid: rec.pid, result };
    }),
  );
  if (process.getuid?.() === 0) {
    const claims = await readdir(join(files.root, CLAIMS_DIR)).catch(() => []);
    for (const name of claims.filter((n) => /^\d+$/.test(n))) await killUserProcesses({ uid: Number(name), gid: Number(name) });
  }
  return stopped.filter((s): s is StoppedDeployment => s !== undefined);
}
