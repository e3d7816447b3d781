import { describe, expect, it } from 'vitest';
import { parseProcStat } from './process-group.js';

describe('parseProcStat', () => {
  it('reads state, process group and start time, even with odd command names', () => {
    const line = '4242 (my (weird) app) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 200';
    expect(parseProcStat(line)).toEqual({ state: 'S', pgrp: 4242, startTime: '987654' });
  });

  it('refuses truncated input', () => {
    expect(parseProcStat('4242 (x) S 1')).toBeUndefined();
    expect(parseProcStat('garbage')).toBeUndefined();
  });
});
