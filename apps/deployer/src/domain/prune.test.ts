import { describe, expect, it } from 'vitest';
import { versionsToPrune } from './prune.js';

describe('versionsToPrune', () => {
  const dirs = [
    { name: 'run-a-1', mtimeMs: 1 },
    { name: 'run-b-1', mtimeMs: 2 },
    { name: 'run-c-1', mtimeMs: 3 },
    { name: 'run-d-1', mtimeMs: 4 },
  ];

  it('keeps the newest', () => {
    expect(versionsToPrune(dirs, 2, new Set()).sort()).toEqual(['run-a-1', 'run-b-1']);
  });

  it('never deletes a protected version, however old', () => {
    expect(versionsToPrune(dirs, 1, new Set(['run-a-1'])).sort()).toEqual(['run-b-1', 'run-c-1']);
  });

  it('deletes nothing when there are no more than `keep`', () => {
    expect(versionsToPrune(dirs, 4, new Set())).toEqual([]);
  });
});
