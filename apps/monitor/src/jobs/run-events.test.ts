import { describe, expect, it } from 'vitest';
import type { HistoryEntry } from '../domain/history.js';
import type { HistoryStore, RunMetrics } from '../ports.js';
import { createLogger } from '@conveyor/service-kit';
import { createRunEventHandler, handleEventEntries } from './run-events.js';

function fakes() {
  const runs: string[] = [];
  const stages: string[] = [];
  const recorded: HistoryEntry[] = [];
  const metrics: RunMetrics = {
    runFinished: (p, s) => runs.push(`${p}:${s}`),
    stageFinished: (l, sec) => stages.push(`${l.pipeline}/${l.stage}/${l.type}/${l.status}=${sec}`),
  };
  const history: HistoryStore = { record: async (e) => void recorded.push(e), recent: async () => recorded };
  return { runs, stages, recorded, handle: createRunEventHandler({ metrics, history }) };
}

const base = { v: 1 as const, at: '2025-01-01T00:00:00.000Z', runId: 'run-00000001', pipeline: 'shop' };

describe('run event handler', () => {
  it('counts finished runs and keeps them in history', async () => {
    const f = fakes();
    await f.handle({ ...base, type: 'run.finished', status: 'SUCCEEDED', durationMs: 5000 });
    expect(f.runs).toEqual(['shop:SUCCEEDED']);
    expect(f.recorded).toEqual([{ runId: 'run-00000001', pipeline: 'shop', status: 'SUCCEEDED', durationMs: 5000, finishedAt: base.at }]);
  });

  it('observes stage durations in seconds', async () => {
    const f = fakes();
    await f.handle({ ...base, type: 'stage.finished', stage: 'Build', stageType: 'build', attempt: 1, status: 'FAILED', durationMs: 2500 });
    expect(f.stages).toEqual(['shop/Build/build/FAILED=2.5']);
  });

  it('ignores started events', async () => {
    const f = fakes();
    await f.handle({ ...base, type: 'run.created', trigger: 'manual' });
    await f.handle({ ...base, type: 'stage.started', stage: 'Build', stageType: 'build', attempt: 1 });
    expect([...f.runs, ...f.stages, ...f.recorded]).toEqual([]);
  });
});

describe('handleEventEntries', () => {
  const logger = createLogger('test', 'silent');
  const entry = (id: string, fields: string[]) => ({ stream: 'p:events', id, fields });
  const event = (runId: string) => JSON.stringify({ ...base, runId, type: 'run.finished', status: 'SUCCEEDED', durationMs: 1 });

  it('hands each entry on in order, skips malformed ones, and returns those whose handling failed', async () => {
    const seen: string[] = [];
    const handle = handleEventEntries(async (e) => {
      if (e.runId === 'run-00000002') throw new Error('history store down');
      seen.push(e.runId);
    }, logger);
    const entries = [entry('1-0', ['event', event('run-00000001')]), entry('2-0', ['event', 'not json']), entry('3-0', ['event', event('run-00000002')]), entry('4-0', ['event', event('run-00000003')])];
    expect(await handle(entries)).toEqual([entries[2]]);
    expect(seen).toEqual(['run-00000001', 'run-00000003']);
  });
});
