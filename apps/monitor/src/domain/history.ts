import { z } from 'zod';
import { IsoTime, parseJsonAs, PipelineName, RunId, RunStatus, type RunEvent } from '@conveyor/contracts';

/** One finished run, kept by the monitor from `run.finished` events for `GET /api/v1/history`. */
export const HistoryEntry = z.object({
  runId: RunId,
  pipeline: PipelineName,
  status: RunStatus,
  durationMs: z.number().nonnegative(),
  finishedAt: IsoTime,
});
export type HistoryEntry = z.infer<typeof HistoryEntry>;

type RunFinished = Extract<RunEvent, { type: 'run.finished' }>;

/** Fixed key order, so the same event always serialises to the same member (re-delivery is a no-op). */
export function historyEntryFrom(event: RunFinished): HistoryEntry {
  return { runId: event.runId, pipeline: event.pipeline, status: event.status, durationMs: event.durationMs, finishedAt: event.at };
}

export function parseHistoryEntry(text: string): HistoryEntry | undefined {
  return parseJsonAs(HistoryEntry, text);
}
