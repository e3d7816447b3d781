import type { RunEvent } from '@conveyor/contracts';
import { historyEntryFrom } from '../domain/history.js';
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
