import { isTerminalRun, type Run } from '@conveyor/contracts';

/** What retention needs to know of a run: whose it is, where it comes in its pipeline, whether it ended. */
export type RunSummary = Pick<Run, 'id' | 'pipeline' | 'number' | 'status' | 'createdAt'>;

/** A run's record as read for retention: none (no record), one that does not parse, or its summary. */
export type RunRecordState = RunSummary | 'unreadable' | undefined;

export interface RetentionPolicy {
  /** Finished runs per pipeline whose artifacts are kept, newest first (`ARTIFACT_RETENTION_RUNS`). */
  keepRuns: number;
  /** Artifacts with no run record are removed only once unchanged this long (a run being stored is never raced). */
  orphanGraceMs: number;
}

/** One hour: far longer than between a run's record being stored and its first artifact written. */
export const ORPHAN_GRACE_MS = 3_600_000;

export interface RetentionInput {
  /** The runs the artifact store holds artifacts of, with when each last changed (ms). */
  stored: readonly { runId: string; modifiedAt: number }[];
  records: ReadonlyMap<string, RunRecordState>;
  /** The runs whose versions serve now (the deployer's live records, read after `records`). */
  live: ReadonlySet<string>;
  /** Pipelines whose live record does not parse: none of their runs expire (which one serves is not known). */
  liveUnknown?: ReadonlySet<string>;
  now: number;
}

export interface RetentionDecision {
  /** Finished runs past their pipeline's newest `keepRuns` (not live). */
  expired: string[];
  /** Runs with no record, unchanged for longer than the grace period. */
  orphans: string[];
  /**
   * Runs that would be orphans, kept because no listed run has a record at all: Redis emptied, or another
   * QUEUE_PREFIX, is likelier than every run's record gone (run history retention deletes a run's
   * artifacts before its record).
   */
  withheld: number;
}

/**
 * Which runs' artifacts to remove. Kept: a run not finished (QUEUED, RUNNING), a pipeline's newest
 * `keepRuns` finished runs by run number (among the runs that have artifacts: one that stored none takes
 * no place), the run whose version serves now, a run whose record does not parse, and a run with no
 * record until it is older than the grace period (and, when no listed run has a record, at all).
 */
export function decideRetention(input: RetentionInput, policy: RetentionPolicy): RetentionDecision {
  const byPipeline = new Map<string, RunSummary[]>();
  const orphans: string[] = [];
  for (const { runId, modifiedAt } of input.stored) {
    const record = input.records.get(runId);
    if (record === undefined) {
      if (input.now - modifiedAt > policy.orphanGraceMs) orphans.push(runId);
    } else if (record !== 'unreadable') {
      const runs = byPipeline.get(record.pipeline) ?? [];
      runs.push(record);
      byPipeline.set(record.pipeline, runs);
    }
  }
  const expired: string[] = [];
  for (const [pipeline, runs] of byPipeline) {
    if (input.liveUnknown?.has(pipeline)) continue;
    runs.sort(newestFirst);
    let finished = 0;
    for (const run of runs) {
      if (!isTerminalRun(run)) continue;
      finished += 1;
      if (finished > policy.keepRuns && !input.live.has(run.id)) expired.push(run.id);
    }
  }
  if (input.records.size === 0) return { expired, orphans: [], withheld: orphans.length };
  return { expired, orphans, withheld: 0 };
}

/** By run number (per pipeline, increasing); ties, which the numbering never makes, by creation then id, so every replica decides alike. */
function newestFirst(a: RunSummary, b: RunSummary): number {
  return b.number - a.number || Date.parse(b.createdAt) - Date.parse(a.createdAt) || (a.id < b.id ? 1 : a.id > b.id ? -1 : 0);
}
