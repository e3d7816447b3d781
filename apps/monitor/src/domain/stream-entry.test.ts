import { describe, expect, it } from 'vitest';
import { parseStreamEntry } from './stream-entry.js';

const event = { v: 1, type: 'run.finished', at: '2025-01-01T00:00:00.000Z', runId: 'run-00000001', pipeline: 'shop', status: 'SUCCEEDED', durationMs: 1200 };

describe('parseStreamEntry', () => {
  it('parses the event field', () => {
    expect(parseStreamEntry(['event', JSON.stringify(event)])).toEqual({ ok: true, event });
  });

  it('reports, never throws, for malformed entries', () => {
    expect(parseStreamEntry([])).toEqual({ ok: false, reason: 'no "event" field' });
    expect(parseStreamEntry(['payload', '{}'])).toMatchObject({ ok: false });
    expect(parseStreamEntry(['event', '{oops'])).toEqual({ ok: false, reason: 'event is not JSON' });
    const wrong = parseStreamEntry(['event', JSON.stringify({ ...event, status: 'MAYBE' })]);
    expect(wrong.ok).toBe(false);
    expect(!wrong.ok && wrong.reason).toContain('status');
    expect(parseStreamEntry(['event', JSON.stringify({ ...event, type: 'run.exploded' })]).ok).toBe(false);
  });
});
