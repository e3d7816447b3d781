import { randomUUID } from 'node:crypto';
import type { Dirent } from 'node:fs';
import { lstat, readdir, rename, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { RunId } from '@conveyor/contracts';
import type { StoredRunArtifacts } from './artifact-store.js';

/** Where the stages' keys put each run's artifacts (artifactKey), and so what retention lists and removes. */
export const RUNS_DIR = 'runs';

/** The name a run's directory takes while it is removed: never a run id, so never listed. */
const REMOVING = '.removing-';

/** Removals renamed this long ago (ctime: a rename sets it) are taken for dead; a live one takes moments. */
const ABANDONED_REMOVAL_MS = 3_600_000;

const isRunId = (name: string): boolean => RunId.safeParse(name).success;

/**
 * The real directories under `<root>/runs/` named as run ids, with their mtimes (a directory's changes
 * when an artifact is written into it). Links and other names are left out: retention never follows
 * them. Also finishes what a removal that died midway left (renamed directories, an hour on).
 */
export async function listRunDirs(root: string): Promise<StoredRunArtifacts[]> {
  const runsDir = join(root, RUNS_DIR);
  const entries = await readdir(runsDir, { withFileTypes: true }).catch((err: NodeJS.ErrnoException): Dirent[] => {
    if (err.code === 'ENOENT') return [];
    throw err;
  });
  await sweepAbandonedRemovals(runsDir, entries.filter((e) => e.isDirectory() && e.name.startsWith(REMOVING)).map((e) => e.name));
  const dirs = entries.filter((e) => e.isDirectory() && isRunId(e.name)).map((e) => e.name);
  const runs: StoredRunArtifacts[] = [];
  for (let at = 0; at < dirs.length; at += 256) {
    const batch = dirs.slice(at, at + 256);
    const infos = await Promise.all(batch.map((name) => lstat(join(runsDir, name)).catch(() => undefined)));
    infos.forEach((info, i) => info?.isDirectory() && runs.push({ runId: batch[i]!, modifiedAt: info.mtimeMs }));
  }
  return runs;
}

/**
 * Removes `<root>/runs/<runId>/` whole; the bytes freed, or undefined when there was nothing to remove.
 * Only a plain run id is taken (no `/`, no `..`: nothing outside `runs/` can be named), and only a real
 * directory is removed: a link there is left alone, its target untouched (rm follows no link inside either).
 */
export async function removeRunDir(root: string, runId: string): Promise<number | undefined> {
  if (!isRunId(runId)) throw new Error(`invalid run id: ${JSON.stringify(runId)}`);
  const runsDir = join(root, RUNS_DIR);
  const dir = join(runsDir, runId);
  const info = await lstat(dir).catch(() => undefined);
  if (!info?.isDirectory()) return undefined;
  // Renamed away first, atomically: of several replicas removing one run at once, one takes it (and
  // counts its bytes) while the others find nothing, and no reader sees the run half removed.
  const doomed = join(runsDir, `${REMOVING}${runId}.${randomUUID()}`);
  try {
    await rename(dir, doomed);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
  // Swapped for a link between the lstat and the rename (only the store's owner could): the link goes, nothing it names.
  const moved = await lstat(doomed);
  const bytes = moved.isDirectory() ? await bytesUnder(doomed) : 0;
  await rm(doomed, { recursive: true, force: true });
  return bytes;
}

/** Best effort: one leftover that cannot be removed now (say, a file made read-only) must not stop retention. */
async function sweepAbandonedRemovals(runsDir: string, names: readonly string[]): Promise<void> {
  for (const name of names) {
    const path = join(runsDir, name);
    const info = await lstat(path).catch(() => undefined);
    if (info?.isDirectory() && Date.now() - info.ctimeMs > ABANDONED_REMOVAL_MS) await rm(path, { recursive: true, force: true }).catch(() => undefined);
  }
}

/** The bytes of the regular files under `dir`. */
async function bytesUnder(dir: string): Promise<number> {
  const names = await readdir(dir, { recursive: true });
  const infos = await Promise.all(names.map((name) => lstat(join(dir, name)).catch(() => undefined)));
  return infos.reduce((sum, info) => sum + (info?.isFile() ? info.size : 0), 0);
}
