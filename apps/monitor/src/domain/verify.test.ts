import { describe, expect, it } from 'vitest';
import { VerifySettings } from '@conveyor/contracts';
import { verify, type ProbeResult, type VerifyDeps } from './verify.js';

/** A fake clock: sleeping and probing advance it; probes answer from a script. */
function harness(script: (i: number) => Partial<ProbeResult> = () => ({}), probeMs = 5) {
  let now = 1000;
  const probedAt: number[] = [];
  const ac = new AbortController();
  const deps: VerifyDeps = {
    probe: async () => {
      probedAt.push(now - 1000);
      const r = { ok: true, ms: probeMs, detail: 'HTTP 200', ...script(probedAt.length) };
      now += r.ms;
      return r;
    },
    sleep: async (ms) => {
      now += ms;
    },
    now: () => now,
    signal: ac.signal,
  };
  return { deps, probedAt, abort: () => ac.abort(new Error('shutting down')) };
}

const settings = (s: Partial<VerifySettings>) => VerifySettings.parse({ durationSeconds: 10, intervalSeconds: 1, ...s });

describe('verify', () => {
  it('probes every interval for the whole duration, its end included, and succeeds when all pass', async () => {
    const h = harness((i) => ({ ms: i }));
    const report = await verify('http://app/healthz', settings({}), h.deps);
    expect(report.status).toBe('SUCCEEDED');
    expect(report.probes).toEqual({ total: 11, failed: 0, p50Ms: 6, p95Ms: 11 });
    expect(h.probedAt).toEqual([0, 1000, 2000, 3000, 4000, 5000, 6000, 7000, 8000, 9000, 10000]);
    expect(report.message).toContain('11 probes of http://app/healthz, 0 failed');
  });

  it('sees a version that breaks in the last interval of the window', async () => {
    const h = harness((i) => (i === 11 ? { ok: false, detail: 'ECONNREFUSED' } : {}));
    const report = await verify('http://app/healthz', settings({}), h.deps);
    expect(report).toMatchObject({ status: 'FAILED', probes: { total: 11, failed: 1 } });
    expect(report.message).toBe('1 of 11 probes of http://app/healthz failed (0 allowed); last: ECONNREFUSED');
  });

  it('tolerates up to maxFailures failed probes', async () => {
    const h = harness((i) => (i % 5 === 0 ? { ok: false, detail: 'HTTP 503' } : {}));
    const report = await verify('http://app/healthz', settings({ maxFailures: 2 }), h.deps);
    expect(report.status).toBe('SUCCEEDED');
    expect(report.probes).toMatchObject({ total: 11, failed: 2 });
  });

  it('fails as soon as more than maxFailures probes failed, naming the last failure', async () => {
    const h = harness((i) => (i >= 3 ? { ok: false, detail: 'HTTP 500' } : {}));
    const report = await verify('http://app/healthz', settings({ maxFailures: 1 }), h.deps);
    expect(report.status).toBe('FAILED');
    expect(report.probes).toMatchObject({ total: 4, failed: 2 });
    expect(report.message).toBe('2 of 4 probes of http://app/healthz failed (1 allowed); last: HTTP 500');
  });

  it('with maxFailures 0, one failed probe fails the stage', async () => {
    const h = harness((i) => (i === 1 ? { ok: false, detail: 'ECONNREFUSED' } : {}));
    const report = await verify('http://app/healthz', settings({}), h.deps);
    expect(report.status).toBe('FAILED');
    expect(report.probes.total).toBe(1);
  });

  it('ends early, passing, when a failed probe finds the version replaced by another run: the failure is not its', async () => {
    const h = harness((i) => (i >= 4 ? { ok: false, detail: 'ECONNREFUSED' } : i === 2 ? { ok: false, detail: 'HTTP 503' } : {}));
    const asked: number[] = [];
    h.deps.replacedBy = async () => {
      asked.push(h.probedAt.length);
      return h.probedAt.length >= 4 ? { runId: 'run-later-1', url: 'http://127.0.0.1:4001' } : undefined;
    };
    const report = await verify('http://app/healthz', settings({ maxFailures: 1 }), h.deps);
    // Asked at each failed probe: the 503 of probe 2 was this version's own, and counts.
    expect(asked).toEqual([2, 4]);
    expect(report).toMatchObject({ status: 'SUCCEEDED', supersededBy: { runId: 'run-later-1', url: 'http://127.0.0.1:4001' }, probes: { total: 3, failed: 1 } });
    expect(report.message).toBe('run run-later-1 replaced this version (http://127.0.0.1:4001 serves now); until then 3 probes of http://app/healthz, 1 failed (1 allowed); p50 5 ms, p95 5 ms');
    expect(h.probedAt).toHaveLength(4);
  });

  it('fails as before when a failed probe finds the version still the one serving', async () => {
    const h = harness((i) => (i >= 3 ? { ok: false, detail: 'HTTP 500' } : {}));
    h.deps.replacedBy = async () => undefined;
    const report = await verify('http://app/healthz', settings({ maxFailures: 1 }), h.deps);
    expect(report).toMatchObject({ status: 'FAILED', probes: { total: 4, failed: 2 } });
    expect(report.supersededBy).toBeUndefined();
  });

  it('skips the slots a slow probe overran, keeping the window', async () => {
    const h = harness(() => ({ ms: 2500, ok: false, detail: 'timed out after 2500 ms' }));
    const report = await verify('http://app/healthz', settings({ maxFailures: 100 }), h.deps);
    expect(h.probedAt).toEqual([0, 3000, 6000, 9000]);
    expect(report.probes).toMatchObject({ total: 4, failed: 4, p50Ms: 2500 });
    // The slot at 10 s was overrun by the probe sent at 9 s, which ended at 11.5 s: past the window, no more.
  });

  it('probes each slot once when a timer fires a millisecond early', async () => {
    const h = harness(() => ({}), 0);
    const sleep = h.deps.sleep;
    h.deps.sleep = (ms, signal) => sleep(ms > 1 ? ms - 1 : ms, signal);
    await verify('http://app/healthz', settings({ durationSeconds: 3 }), h.deps);
    expect(h.probedAt).toEqual([0, 999, 1999, 2999]);
  });

  it('probes at the start only when the interval exceeds the duration', async () => {
    const h = harness();
    expect((await verify('http://app/healthz', settings({ durationSeconds: 1, intervalSeconds: 5 }), h.deps)).probes.total).toBe(1);
  });

  it('throws when aborted instead of reporting a verdict', async () => {
    const h = harness();
    const sleep = h.deps.sleep;
    let sleeps = 0;
    h.deps.sleep = async (ms, signal) => {
      if (++sleeps === 3) h.abort();
      return sleep(ms, signal);
    };
    await expect(verify('http://app/healthz', settings({}), h.deps)).rejects.toThrow('shutting down');
    expect(h.probedAt).toHaveLength(3);
  });
});
