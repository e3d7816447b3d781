import { describe, expect, it } from 'vitest';
import { describeHealthFailure, waitHealthy, type HealthWaitDeps, type ProbeVerdict } from './health-wait.js';

function fakeDeps(answers: ProbeVerdict[], opts: { exitAfterProbes?: number; probeMs?: number } = {}) {
  let now = 0;
  let probes = 0;
  const deps: HealthWaitDeps = {
    probe: async () => {
      probes += 1;
      now += opts.probeMs ?? 10;
      return answers[probes - 1] ?? false;
    },
    exited: () => (opts.exitAfterProbes !== undefined && probes >= opts.exitAfterProbes ? { code: 1, signal: null } : undefined),
    sleep: async (ms) => {
      now += ms;
    },
    now: () => now,
  };
  return { deps, probes: () => probes };
}

const opts = { timeoutMs: 1000, intervalMs: 100, probeTimeoutMs: 500 };

describe('waitHealthy', () => {
  it('is healthy at the first 200', async () => {
    const { deps, probes } = fakeDeps([false, false, true]);
    expect(await waitHealthy(deps, opts)).toEqual({ kind: 'healthy', afterMs: 230 });
    expect(probes()).toBe(3);
  });

  it('times out when no probe succeeds', async () => {
    const { deps, probes } = fakeDeps([]);
    const outcome = await waitHealthy(deps, opts);
    expect(outcome.kind).toBe('timeout');
    expect(probes()).toBe(10);
  });

  it('fails as soon as the process exits, without waiting for the deadline', async () => {
    const { deps, probes } = fakeDeps([], { exitAfterProbes: 2 });
    expect(await waitHealthy(deps, opts)).toEqual({ kind: 'exited', code: 1, signal: null });
    expect(probes()).toBe(2);
  });

  it('stops at a 200 the probe refuses for good, saying why, without waiting for the deadline', async () => {
    const { deps, probes } = fakeDeps([false, { refused: 'port 4100 is held by pid 42, not by this version' }, true]);
    expect(await waitHealthy(deps, opts)).toEqual({ kind: 'refused', reason: 'port 4100 is held by pid 42, not by this version' });
    expect(probes()).toBe(2);
  });

  it('stops when aborted', async () => {
    const ac = new AbortController();
    const { deps } = fakeDeps([]);
    deps.sleep = async () => ac.abort();
    expect(await waitHealthy({ ...deps, signal: ac.signal }, opts)).toEqual({ kind: 'aborted' });
  });

  it('never probes longer than the time left', async () => {
    const seen: number[] = [];
    const { deps } = fakeDeps([]);
    const probe = deps.probe;
    deps.probe = (ms) => {
      seen.push(ms);
      return probe(ms);
    };
    await waitHealthy(deps, { timeoutMs: 300, intervalMs: 100, probeTimeoutMs: 250 });
    expect(seen[0]).toBe(250);
    expect(Math.max(...seen.slice(1))).toBeLessThanOrEqual(190);
  });
});

describe('describeHealthFailure', () => {
  it('says what went wrong', () => {
    expect(describeHealthFailure({ kind: 'exited', code: 3, signal: null }, 60, '/healthz')).toBe('deployed command exited with code 3 before /healthz answered 200');
    expect(describeHealthFailure({ kind: 'exited', code: null, signal: 'SIGKILL' }, 60, '/healthz')).toContain('killed by SIGKILL');
    expect(describeHealthFailure({ kind: 'timeout', afterMs: 60_000 }, 60, '/up')).toBe('/up did not answer 200 within 60s');
    expect(describeHealthFailure({ kind: 'refused', reason: 'another process answers' }, 60, '/up')).toBe('another process answers');
  });
});
