import type { PrunableArtifactStore } from '@conveyor/artifacts';
import type { Logger } from '@conveyor/service-kit';
import { decideRetention, type RetentionPolicy } from './domain/artifact-retention.js';
import type { RetentionReader } from './ports.js';

export interface ArtifactPrunerDeps {
  store: PrunableArtifactStore;
  reader: RetentionReader;
  logger: Logger;
  policy: RetentionPolicy;
  now?: () => number;
}

export interface PruneResult {
  /** Runs with artifacts in the store when the pass began. */
  checked: number;
  /** Runs whose artifacts this pass removed (past retention, and orphans), not counting any another replica removed first. */
  removed: number;
  /** Of those, runs with no record. */
  orphans: number;
  /** Bytes freed. */
  bytes: number;
}

/** Removals at once: enough to keep a backlog's first pass short, few enough not to crowd the disk. */
const PARALLEL_REMOVALS = 8;

/**
 * Artifact retention: removes the artifacts of runs past their pipeline's newest `keepRuns` finished
 * runs, and of runs with no record once past the grace period. Several replicas may run passes at once:
 * each decides from what it reads, every decision only ever removes artifacts no run still needs, and
 * removing what another replica removed first is a no-op. The run records are left as they are.
 */
export class ArtifactPruner {
  constructor(private readonly deps: ArtifactPrunerDeps) {}

  async prune(signal?: AbortSignal): Promise<PruneResult> {
    const { store, reader, logger, policy } = this.deps;
    const stored = await store.listRuns();
    if (stored.length === 0) return { checked: 0, removed: 0, orphans: 0, bytes: 0 };
    const records = await reader.runRecords(stored.map((s) => s.runId));
    // Read after the records: a run seen ended went live (if it did) before it ended, so it is seen live here.
    const pipelines = new Set<string>();
    for (const record of records.values()) if (record !== 'unreadable') pipelines.add(record.pipeline);
    const live = await reader.liveRuns([...pipelines]);
    const now = (this.deps.now ?? Date.now)();
    const { expired, orphans, withheld } = decideRetention({ stored, records, live: live.runIds, liveUnknown: live.unreadable, now }, policy);
    if (withheld > 0) logger.warn({ runs: withheld }, 'artifacts of runs without a record kept: no listed run has one (Redis emptied, or another QUEUE_PREFIX?)');
    if (live.unreadable.size > 0) logger.warn({ pipelines: [...live.unreadable] }, "these pipelines' artifacts kept: their live deployment record does not parse");
    const orphaned = new Set(orphans);
    const doomed = [...expired, ...orphans];
    const result: PruneResult = { checked: stored.length, removed: 0, orphans: 0, bytes: 0 };
    for (const { runId, bytes, error } of await removeRunArtifacts(store, doomed, signal)) {
      if (error !== undefined) logger.warn({ err: error, runId }, "could not remove a run's artifacts");
      // undefined: another replica removed them first.
      else if (bytes !== undefined) {
        result.removed += 1;
        result.orphans += orphaned.has(runId) ? 1 : 0;
        result.bytes += bytes;
      }
    }
    if (result.removed > 0) logger.info({ ...result, keepRuns: policy.keepRuns }, 'pruned run artifacts');
    return result;
  }
}

/**
 * Removes these runs' artifacts, PARALLEL_REMOVALS at a time (enough to keep a backlog short, few enough
 * not to crowd the disk), until `signal` says stop: for each run tried, the bytes freed (undefined when
 * nothing was there) or the error.
 */
export async function removeRunArtifacts(
  store: Pick<PrunableArtifactStore, 'removeRun'>,
  runIds: readonly string[],
  signal?: AbortSignal,
): Promise<Array<{ runId: string; bytes?: number; error?: unknown }>> {
  const outcomes: Array<{ runId: string; bytes?: number; error?: unknown }> = [];
  for (let at = 0; at < runIds.length && !signal?.aborted; at += PARALLEL_REMOVALS) {
    const batch = runIds.slice(at, at + PARALLEL_REMOVALS);
    const settled = await Promise.allSettled(batch.map((runId) => store.removeRun(runId)));
    settled.forEach((outcome, i) => {
      const runId = batch[i]!;
      outcomes.push(outcome.status === 'fulfilled' ? { runId, ...(outcome.value === undefined ? {} : { bytes: outcome.value }) } : { runId, error: outcome.reason ?? 'removal failed' });
    });
  }
  return outcomes;
}
