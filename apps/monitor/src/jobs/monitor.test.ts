import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { VerifySettings } from '@conveyor/contracts';
import { createRedis, freePort, type Redis } from '@conveyor/service-kit';
import { verify } from '../domain/verify.js';
import { abortableSleep, replacedBy } from './monitor.js';

/** The worker connection while Redis is away: it retries for ever, so a GET never answers. */
let away: Redis;
beforeAll(async () => {
  away = createRedis(`redis://127.0.0.1:${await freePort()}`, 'worker');
  away.on('error', () => undefined); // refused: expected
});
afterAll(() => away.disconnect());

const key = { prefix: 'p', pipeline: 'shop', runId: 'run-1' };

/** How long `work` took, or 'hung' when it had not settled after `ms`. */
async function timed(work: Promise<unknown>, ms: number): Promise<number | 'hung'> {
  const started = Date.now();
  const hung = new Promise<'hung'>((r) => setTimeout(() => r('hung'), ms).unref());
  return Promise.race([work.then(() => Date.now() - started, () => Date.now() - started), hung]);
}

describe('replacedBy', () => {
  it('is no replacement when Redis does not answer in time', async () => {
    const started = Date.now();
    expect(await replacedBy(away, key, new AbortController().signal, 300)).toBeUndefined();
    expect(Date.now() - started).toBeLessThan(1000);
  });

  it('gives up at once when the verification is aborted', async () => {
    const ac = new AbortController();
    const asked = replacedBy(away, key, ac.signal, 60_000);
    setTimeout(() => ac.abort(new Error('run cancelled')), 50);
    expect(await timed(asked, 5000)).toBeLessThan(1000);
  });

  it('lets a verification end on time with Redis away, counting the failed probes, and be cancelled while it asks', async () => {
    const settings = VerifySettings.parse({ durationSeconds: 2, intervalSeconds: 0.5, maxFailures: 100 });
    const deps = (signal: AbortSignal) => ({
      probe: async () => ({ ok: false, ms: 1, detail: 'ECONNREFUSED' }),
      sleep: abortableSleep,
      now: () => performance.now(),
      signal,
      replacedBy: () => replacedBy(away, key, signal),
    });
    let report: Awaited<ReturnType<typeof verify>> | undefined;
    const ended = verify('http://app/healthz', settings, deps(new AbortController().signal)).then((r) => (report = r));
    const took = await timed(ended, 10_000);
    expect(took).not.toBe('hung');
    expect(took).toBeLessThan(3500);
    expect(report).toMatchObject({ status: 'SUCCEEDED', probes: { failed: report?.probes.total } });
    expect(report!.probes.total).toBeGreaterThanOrEqual(2);

    const ac = new AbortController();
    const cancelled = verify('http://app/healthz', settings, deps(ac.signal));
    setTimeout(() => ac.abort(new Error('run cancelled')), 100);
    await expect(cancelled).rejects.toThrow('run cancelled');
  }, 20_000);
});
