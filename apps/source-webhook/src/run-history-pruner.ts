import type { PrunableArtifactStore } from '@conveyor/artifacts';
import { isTerminalRun, type Run } from '@conveyor/contracts';
import type { Logger } from '@conveyor/service-kit';
import { removeRunArtifacts } from './artifact-pruner.js';
import type { RetentionReader, RunHistory } from './ports.js';

export interface RunHistoryPrunerDeps {
  runs: RunHistory;
  reader: Pick<RetentionReader, 'liveRuns'>;
  artifacts: Pick<PrunableArtifactStore, 'removeRun'>;
  logger: Logger;
  /** Finished runs created more than this many days ago are deleted (`RUN_HISTORY_DAYS`). */
  keepDays: number;
  /** Index entries read per pass at most (default 50,000): a first pass over years of history stays short. */
  maxReadPerPass?: number;
  now?: () => number;
}

const DAY_MS = 86_400_000;
/** Entries read per page. */
const PAGE = 500;

/**
 * Run history retention: deletes the runs created more than `keepDays` days ago that have finished, with
 * their artifacts (QUEUED and RUNNING runs stay, however old), except the run whose version serves now,
 * and all of a pipeline's while its live record does not parse. Their logs expired long before (30 days).
 * Several replicas may run it at once: a run is deleted once, by whichever comes first.
 */
export class RunHistoryPruner {
  constructor(private readonly deps: RunHistoryPrunerDeps) {}

  async prune(signal?: AbortSignal): Promise<{ removed: number; dangling: number; read: number }> {
    const { runs, reader, logger, keepDays } = this.deps;
    const maxRead = this.deps.maxReadPerPass ?? 50_000;
    const cutoff = (this.deps.now ?? Date.now)() - keepDays * DAY_MS;
    const result = { removed: 0, dangling: 0, read: 0 };
    // Each pass starts at another pipeline: one with more kept runs than a pass reads cannot starve the rest.
    const all = await runs.pipelines();
    const first = Math.floor(Math.random() * all.length);
    pipelines: for (const pipeline of [...all.slice(first), ...all.slice(0, first)]) {
      // Entries kept stay where they are: the next page starts after them.
      for (let offset = 0; ; ) {
        if (signal?.aborted || result.read >= maxRead) break pipelines;
        const page = await runs.page(pipeline, cutoff, offset, Math.min(PAGE, maxRead - result.read));
        result.read += page.read;
        // Read after the page: a run seen ended whose deploy went live is seen live.
        const live = await reader.liveRuns([pipeline]);
        // Which of its runs serves is not known: none of them goes.
        if (live.unreadable.size > 0) break;
        // Artifacts before records, so none are left without a record (which artifact retention would have to
        // tell from another stack's); a run whose artifacts could not be removed keeps its record, for next time.
        const doomed = new Map(page.runs.filter((r) => isTerminalRun(r) && !live.runIds.has(r.id)).map((r) => [r.id, r]));
        const cleared: Run[] = [];
        for (const { runId, error } of await removeRunArtifacts(this.deps.artifacts, [...doomed.keys()], signal)) {
          if (error === undefined) cleared.push(doomed.get(runId)!);
          else logger.warn({ err: error, runId }, "could not remove an old run's artifacts; its record stays until they are");
        }
        const gone = await runs.remove(pipeline, cleared, page.missing);
        result.removed += gone.runs;
        result.dangling += gone.dangling;
        offset += page.read - gone.runs - gone.dangling;
        if (page.read < PAGE) break;
      }
    }
    if (result.removed + result.dangling > 0) logger.info({ runs: result.removed, dangling: result.dangling, keepDays }, 'removed the records of old runs');
    return result;
  }
}
