import { resolve } from 'node:path';
import { stopAllAppUsers } from './adapters/app-users.js';
import { DeploymentFiles } from './adapters/deployment-files.js';
import { ownGroupAlive, stopGroup } from './adapters/process-group.js';
import { DEFAULT_UID_CLAIMS_DIR } from './adapters/uid-claims.js';
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
 * as a user id this deploy directory holds in the host's register (`claimsDir`: the deployer's
 * DEPLOY_UID_CLAIMS_DIR, by default its default), and as no other: another stack's versions are
 * theirs. For the launcher's shutdown: the deployer itself never stops deployments when it stops.
 * Records stay on disk.
 */
export async function stopAllDeployments(deployDir: string, graceMs = 10_000, opts: { claimsDir?: string } = {}): Promise<StoppedDeployment[]> {
  const files = new DeploymentFiles(resolve(deployDir));
  // A version is recorded twice (current.json and its own record): one stop per live group. Records are
  // checked first: a stale one whose number a later version got must not stand for that version.
  const byGroup = new Map<number, DeploymentRecord>();
  for (const rec of await files.allRecords()) if (ownGroupAlive(rec)) byGroup.set(rec.pgid, rec);
  const stopped = await Promise.all(
    [...byGroup.values()].map(async (rec): Promise<StoppedDeployment | undefined> => {
      const result = await stopGroup(rec, graceMs);
      if (result === 'not-running') return undefined;
      return { pipeline: rec.pipeline, runId: rec.runId, attempt: rec.attempt, pid: rec.pid, result };
    }),
  );
  if (process.getuid?.() === 0) await stopAllAppUsers(files.root, resolve(opts.claimsDir ?? DEFAULT_UID_CLAIMS_DIR));
  return stopped.filter((s): s is StoppedDeployment => s !== undefined);
}
