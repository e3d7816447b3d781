import type { RunEvent } from '@conveyor/contracts';
import type { Logger, StreamEntry } from '@conveyor/service-kit';
import { historyEntryFrom } from '../domain/history.js';
import { parseStreamEntry } from '../domain/stream-entry.js';
import type { HistoryStore, RunEventHandler, RunMetrics } from '../ports.js';

/** Turns run events into metrics and history. Re-delivery re-counts metrics but never duplicates history. */
export function createRunEventHandler(deps: { metrics: RunMetrics; history: HistoryStore }): RunEventHandler {
  return async (event: RunEvent) => {
    switch (event.type) {
      case 'run.finished':
        await deps.history.record(historyEntryFrom(event));
        deps.metrics.runFinished(event.pipeline, event.status);
        return;
      case 'stage.finished':
        deps.metrics.stageFinished(
          { pipeline: event.pipeline, stage: event.stage, type: event.stageType, status: event.status },
          event.durationMs / 1000,
        );
        return;
      case 'run.created':
      case 'stage.started':
        return;
      default: {
        const never: never = event;
        throw new Error(`unhandled run event ${JSON.stringify(never)}`);
      }
    }
  };
}

/**
 * Stream entries → run events → `handle`, one after the other. A malformed entry is logged and counted
 * as handled (it would never parse); an entry whose handling throws is returned, to be tried again.
 */
export function handleEventEntries(handle: RunEventHandler, logger: Logger): (entries: StreamEntry[]) => Promise<StreamEntry[]> {
  return async (entries) => {
    const failed: StreamEntry[] = [];
    for (const entry of entries) {
      const parsed = parseStreamEntry(entry.fields);
      if (!parsed.ok) {
        logger.warn({ id: entry.id, stream: entry.stream, reason: parsed.reason }, 'skipped malformed run event');
        continue;
      }
      try {
        await handle(parsed.event);
      } catch (err) {
        logger.error({ err, id: entry.id, type: parsed.event.type }, 'run event handling failed; will retry');
        failed.push(entry);
      }
    }
    return failed;
  };
}
