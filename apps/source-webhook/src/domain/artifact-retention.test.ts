import { describe, expect, it } from 'vitest';
import type { RunStatus } from '@conveyor/contracts';
import { decideRetention, type RetentionInput, type RunRecordState, type RunSummary } from './artifact-retention.js';

const NOW = Date.parse('2025-06-01T12:00:00Z');
const HOUR = 3_600_000;
const policy = { keepRuns: 2, orphanGraceMs: HOUR };

const run = (id: string, number: number, status: RunStatus = 'SUCCEEDED', pipeline = 'shop'): RunSummary => ({
  id,
  pipeline,
  number,
  status,
  createdAt: new Date(NOW - (100 - number) * 60_000).toISOString(),
});

/** Every run stored an hour and a day ago, unless `modifiedAt` says otherwise. */
function input(records: [string, RunRecordState][], extra: Partial<RetentionInput> = {}): RetentionInput {
  return {
    stored: records.map(([runId]) => ({ runId, modifiedAt: NOW - 25 * HOUR })),
    records: new Map(records.filter(([, r]) => r !== undefined)),
    live: new Set(),
    now: NOW,
    ...extra,
  };
}

describe('decideRetention', () => {
  it("keeps each pipeline's newest finished runs by number, whatever order they are listed in, and expires the rest", () => {
    const records: [string, RunRecordState][] = [
      ['run-3', run('run-3', 3)],
      ['run-1', run('run-1', 1, 'FAILED')],
      ['run-4', run('run-4', 4, 'CANCELLED')],
      ['run-2', run('run-2', 2)],
      ['web-1', run('web-1', 1, 'SUCCEEDED', 'web')],
      ['web-2', run('web-2', 2, 'SUCCEEDED', 'web')],
    ];
    const decision = decideRetention(input(records), policy);
    expect(decision.expired.sort()).toEqual(['run-1', 'run-2']);
    expect(decision.orphans).toEqual([]);
  });

  it('never expires a run not finished, and does not count it among the kept', () => {
    const records: [string, RunRecordState][] = [
      ['old-running', run('old-running', 1, 'RUNNING')],
      ['queued', run('queued', 2, 'QUEUED')],
      ['a', run('a', 3)],
      ['b', run('b', 4)],
      ['c', run('c', 5)],
      ['running', run('running', 6, 'RUNNING')],
    ];
    expect(decideRetention(input(records), policy).expired).toEqual(['a']);
  });

  it('keeps the live run past the newest N; it still takes one of the N places when among them', () => {
    const records: [string, RunRecordState][] = [1, 2, 3, 4].map((n) => [`r${n}`, run(`r${n}`, n)]);
    expect(decideRetention(input(records, { live: new Set(['r1']) }), policy).expired).toEqual(['r2']);
    expect(decideRetention(input(records, { live: new Set(['r4']) }), policy).expired.sort()).toEqual(['r1', 'r2']);
  });

  it('removes artifacts with no run record only past the grace period, and keeps those whose record does not parse', () => {
    const decision = decideRetention(
      {
        stored: [
          { runId: 'gone-old', modifiedAt: NOW - HOUR - 1 },
          { runId: 'gone-new', modifiedAt: NOW - HOUR + 60_000 },
          { runId: 'garbled', modifiedAt: NOW - 30 * 24 * HOUR },
        ],
        records: new Map([['garbled', 'unreadable' as const]]),
        live: new Set(),
        now: NOW,
      },
      { keepRuns: 0, orphanGraceMs: HOUR },
    );
    expect(decision).toEqual({ expired: [], orphans: ['gone-old'], withheld: 0 });
  });

  it('removes no orphans when no listed run has a record at all (Redis emptied, or another prefix)', () => {
    const stored = ['a', 'b'].map((runId) => ({ runId, modifiedAt: NOW - 30 * 24 * HOUR }));
    expect(decideRetention({ stored, records: new Map(), live: new Set(), now: NOW }, policy)).toEqual({ expired: [], orphans: [], withheld: 2 });
  });

  it("expires none of a pipeline's runs while its live record does not parse (which one serves is not known)", () => {
    const records: [string, RunRecordState][] = [
      ...[1, 2, 3, 4].map((n): [string, RunRecordState] => [`r${n}`, run(`r${n}`, n)]),
      ...[1, 2, 3].map((n): [string, RunRecordState] => [`web-${n}`, run(`web-${n}`, n, 'SUCCEEDED', 'web')]),
    ];
    expect(decideRetention(input(records, { liveUnknown: new Set(['shop']) }), policy).expired).toEqual(['web-1']);
  });
});
