import type { RunEvent } from '@conveyor/contracts';
import type { HistoryEntry } from './domain/history.js';
import type { ProbeResult } from './domain/verify.js';

/** One HTTP probe of a deployed service. */
export interface Prober {
  probe(url: string, timeoutMs: number, signal: AbortSignal): Promise<ProbeResult>;
}

/** Finished runs, most recent first; survives a monitor restart. */
export interface HistoryStore {
  record(entry: HistoryEntry): Promise<void>;
  recent(query: { pipeline?: string; limit: number }): Promise<HistoryEntry[]>;
}

/** What the monitor counts from run events. */
export interface RunMetrics {
  runFinished(pipeline: string, status: string): void;
  stageFinished(labels: { pipeline: string; stage: string; type: string; status: string }, seconds: number): void;
}

export type RunEventHandler = (event: RunEvent) => Promise<void>;
