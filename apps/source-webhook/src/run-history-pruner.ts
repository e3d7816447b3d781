import { isTerminalRun } from '@conveyor/contracts';
import type { Logger } from '@conveyor/service-kit';
import type { RetentionReader, RunHistory } from './ports.js';

export interface RunHistoryPrunerDeps {
  runs: RunHistory;
  reader: Pick<RetentionReader, 'liveRuns'>;
  logger: Logger;
  /** Finished runs created more than this many days ago are deleted (`RUN_HISTORY_DAYS`). */
  keepDays: number;
  now?: () => number;
}

const DAY_MS = 86_400_000;
/** Runs read per page. */
const PAGE = 500;
/** Runs deleted per pass at most: a first pass over years of history stays short; the next ones go on. */
const MAX_PER_PASS = 20_000;

/**
 * Run history retention: deletes the records of runs created more than `keepDays` days ago that have
 * finished (QUEUED and RUNNING runs stay, however old), except the run whose version serves now. Their
 * logs expired long before (30 days); their artifacts, once without a record, go with the artifact
 * retention's orphans. Several replicas may run it at once: a run is deleted once, by whichever comes first.
 */
export class RunHistoryPruner {
  constructor(private readonly deps: RunHistoryPrunerDeps) {}

  async prune(): Promise<{ removed: number }> {
    const { runs, reader, logger, keepDays } = this.deps;
    const cutoff = (this.deps.now ?? Date.now)() - keepDays * DAY_MS;
    let removed = 0;
    for (const pipeline of await runs.indexedPipelines()) {
      const live = await reader.liveRuns([pipeline]);
      // Which of its runs serves is not known: none of them goes.
      if (live.unreadable.size > 0) continue;
      // Runs kept on a page stay where they are: the next page starts after them.
      for (let offset = 0; removed < MAX_PER_PASS; ) {
        const page = await runs.runsCreatedBefore(pipeline, cutoff, offset, Math.min(PAGE, MAX_PER_PASS - removed));
        const gone = await runs.removeFinished(
          pipeline,
          page.runs.filter((r) => isTerminalRun(r) && !live.runIds.has(r.id)),
        );
        removed += gone;
        offset += page.read - gone;
        if (page.read < PAGE) break;
      }
    }
    if (removed > 0) logger.info({ runs: removed, keepDays }, 'removed the records of old runs');
    return { removed };
  }
}
