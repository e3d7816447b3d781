import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import type { PrunableArtifactStore } from '@conveyor/artifacts';
import { createLogger } from '@conveyor/service-kit';
import { chainedTimer, createRetention } from './retention.js';

describe('chainedTimer (retention and reconciler passes)', () => {
  beforeEach(() => vi.useFakeTimers());
  afterEach(() => vi.useRealTimers());

  it('runs the first pass after firstMs, then each next one intervalMs after the last has ended, never two at once', async () => {
    const started: number[] = [];
    let running = 0;
    let most = 0;
    let finish: (() => void) | undefined;
    const timer = chainedTimer(
      () => {
        started.push(Date.now());
        most = Math.max(most, ++running);
        return new Promise<void>((r) => (finish = () => (running--, r())));
      },
      1000,
      300,
    );
    const t0 = Date.now();
    timer.start();
    await vi.advanceTimersByTimeAsync(299);
    expect(started).toEqual([]);
    await vi.advanceTimersByTimeAsync(1);
    expect(started).toEqual([t0 + 300]);
    // The pass takes 5 s: no second one starts meanwhile.
    await vi.advanceTimersByTimeAsync(5000);
    expect(started).toHaveLength(1);
    finish!();
    await vi.advanceTimersByTimeAsync(999);
    expect(started).toHaveLength(1);
    await vi.advanceTimersByTimeAsync(1);
    expect(started).toEqual([t0 + 300, t0 + 6300]);
    expect(most).toBe(1);
    finish!();
    await timer.stop();
    await vi.advanceTimersByTimeAsync(10_000);
    expect(started).toHaveLength(2);
  });

  it('stop waits for the pass under way and schedules no other', async () => {
    let finish!: () => void;
    let passes = 0;
    const timer = chainedTimer(() => (passes++, new Promise<void>((r) => (finish = r))), 1000, 0);
    timer.start();
    await vi.advanceTimersByTimeAsync(0);
    expect(passes).toBe(1);
    let stopped = false;
    const stopping = timer.stop().then(() => (stopped = true));
    await vi.advanceTimersByTimeAsync(100);
    expect(stopped).toBe(false);
    finish();
    await stopping;
    await vi.advanceTimersByTimeAsync(5000);
    expect(passes).toBe(1);
  });

  it('retention makes its first pass 30 s after start, or one interval if that is shorter, then one each interval', async () => {
    for (const [interval, first] of [[300_000, 30_000], [10_000, 10_000]] as const) {
      const passes: number[] = [];
      // A pass of artifact retention starts by listing the stored runs: none here, so it ends there.
      const artifacts = { listRuns: async () => (passes.push(Date.now()), []) } as unknown as PrunableArtifactStore;
      const retention = createRetention(
        { redis: { defineCommand: () => undefined } as never, prefix: 'p', runs: {} as never, artifacts, logger: createLogger('test', 'silent') },
        { ARTIFACT_RETENTION_RUNS: 20, RUN_HISTORY_DAYS: 0, RETENTION_INTERVAL_MS: interval },
      );
      const t0 = Date.now();
      retention.start();
      await vi.advanceTimersByTimeAsync(first - 1);
      expect(passes).toEqual([]);
      await vi.advanceTimersByTimeAsync(1);
      expect(passes).toEqual([t0 + first]);
      await vi.advanceTimersByTimeAsync(interval);
      expect(passes).toEqual([t0 + first, t0 + first + interval]);
      await retention.stop();
    }
  });
});
