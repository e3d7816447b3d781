import { describe, expect, it } from 'vitest';
import { isSameVersion, localUrl, parseRecord, supersededBy, versionName } from './deployment-record.js';

const record = {
  pipeline: 'shop',
  runId: 'run-00000001',
  attempt: 1,
  pid: 1234,
  pgid: 1234,
  port: 4100,
  url: localUrl(4100),
  commit: 'abc',
  startedAt: '2025-01-01T00:00:00.000Z',
};

describe('deployment records', () => {
  it('round-trips through JSON', () => {
    expect(parseRecord(JSON.stringify(record))).toEqual(record);
  });

  it('treats missing, garbled or foreign JSON as no record', () => {
    expect(parseRecord(undefined)).toBeUndefined();
    expect(parseRecord('{not json')).toBeUndefined();
    expect(parseRecord(JSON.stringify({ ...record, pid: 'x' }))).toBeUndefined();
    expect(parseRecord(JSON.stringify({ ...record, pipeline: '../etc' }))).toBeUndefined();
  });

  it('names versions <runId>-<attempt> and recognises the same version', () => {
    expect(versionName('run-00000001', 2)).toBe('run-00000001-2');
    expect(isSameVersion(record, 'run-00000001', 1)).toBe(true);
    expect(isSameVersion(record, 'run-00000001', 2)).toBe(false);
    expect(localUrl(4100)).toBe('http://127.0.0.1:4100');
  });

  it('calls a version superseded only when another went live after it did', () => {
    const a = { ...record, liveAt: '2025-01-01T00:01:00.000Z' };
    const b = { ...record, runId: 'run-00000002', liveAt: '2025-01-01T00:02:00.000Z' };
    expect(supersededBy(a, b)).toEqual(b);
    // B went live before A was marked: A's deployer died between marking it and naming it in current.json.
    expect(supersededBy(a, { ...b, liveAt: '2025-01-01T00:00:30.000Z' })).toBeUndefined();
    // Never live, nothing serving, itself serving, or a current.json from before liveAt existed.
    expect(supersededBy(record, b)).toBeUndefined();
    expect(supersededBy(a, undefined)).toBeUndefined();
    expect(supersededBy(a, a)).toBeUndefined();
    expect(supersededBy(a, { ...record, runId: 'run-00000002' })).toBeUndefined();
    expect(supersededBy(undefined, b)).toBeUndefined();
  });
});
