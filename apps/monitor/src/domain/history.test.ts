import { describe, expect, it } from 'vitest';
import { historyEntryFrom, parseHistoryEntry } from './history.js';

const finished = { v: 1 as const, type: 'run.finished' as const, at: '2025-01-01T00:00:00.000Z', runId: 'run-00000001', pipeline: 'shop', status: 'FAILED' as const, durationMs: 1200 };

describe('history entries', () => {
  it('are built from run.finished events', () => {
    expect(historyEntryFrom(finished)).toEqual({ runId: 'run-00000001', pipeline: 'shop', status: 'FAILED', durationMs: 1200, finishedAt: '2025-01-01T00:00:00.000Z' });
  });

  it('serialise identically for the same event, so a re-delivered event is stored once', () => {
    // The same event as it may come back: its keys in another order.
    const reordered = Object.fromEntries(Object.entries(finished).reverse()) as typeof finished;
    expect(Object.keys(reordered)).not.toEqual(Object.keys(finished));
    expect(JSON.stringify(historyEntryFrom(finished))).toBe(JSON.stringify(historyEntryFrom(reordered)));
  });

  it('are parsed back, and garbage is dropped', () => {
    expect(parseHistoryEntry(JSON.stringify(historyEntryFrom(finished)))).toEqual(historyEntryFrom(finished));
    expect(parseHistoryEntry('nope')).toBeUndefined();
    expect(parseHistoryEntry(JSON.stringify({ runId: 'x' }))).toBeUndefined();
  });
});
