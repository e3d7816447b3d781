import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { StageResult } from '@conveyor/contracts';
import { createLogger, createResultPublisher, resultsStreamKey } from '@conveyor/service-kit';
import { testRedis, uniquePrefix } from '@conveyor/testing';
import { RESULTS_GROUP, ResultsConsumer } from '../src/jobs/results-consumer.js';
import type { Orchestrator } from '../src/orchestrator.js';

let url: string;
let redis: Redis;
const logger = createLogger('test', 'silent');

const result = (n: number): StageResult => ({
  v: 1, jobId: `run-consumer-${n}.Build.1`, runId: `run-consumer-${n}`, stage: 'Build', stageIndex: 1, attempt: 1, status: 'SUCCEEDED',
  startedAt: new Date().toISOString(), finishedAt: new Date().toISOString(), output: {},
});

async function until(check: () => Promise<boolean> | boolean, ms = 15_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error('timed out');
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** An orchestrator stand-in that hands each result to `handle`; a throw means "not applied". */
function consumer(prefix: string, handle: (r: StageResult) => Promise<void>) {
  const orchestrator = {
    async handleResults(results: StageResult[]) {
      const failed: StageResult[] = [];
      for (const r of results) await handle(r).catch(() => failed.push(r));
      return failed;
    },
  } as unknown as Orchestrator;
  return new ResultsConsumer({ redis: new Redis(url, { maxRetriesPerRequest: null }), prefix, orchestrator, logger, claimIdleMs: 200, blockMs: 100 });
}

beforeAll(async () => {
  url = (await testRedis()).url;
  redis = new Redis(url);
});
afterAll(async () => {
  redis.disconnect();
  await (await testRedis()).stop();
});

describe('ResultsConsumer', () => {
  it('applies published results and removes them from the stream', async () => {
    const prefix = uniquePrefix('rc');
    const seen: string[] = [];
    const c = consumer(prefix, async (r) => void seen.push(r.jobId));
    await c.start();
    const publisher = createResultPublisher(redis, prefix);
    for (const n of [1, 2, 3]) await publisher.publish(result(n));
    await until(() => seen.length === 3);
    await c.stop();
    expect(seen.sort()).toEqual(['run-consumer-1.Build.1', 'run-consumer-2.Build.1', 'run-consumer-3.Build.1']);
    await until(async () => (await redis.xlen(resultsStreamKey(prefix))) === 0);
    // The result also stays readable under its job id, for the reconciler.
    expect(JSON.parse((await redis.get(`${prefix}:result:run-consumer-1.Build.1`))!).status).toBe('SUCCEEDED');
  });

  it('takes over what a dead reader left unacknowledged', async () => {
    const prefix = uniquePrefix('rc');
    const key = resultsStreamKey(prefix);
    await redis.xgroup('CREATE', key, RESULTS_GROUP, '0', 'MKSTREAM');
    await createResultPublisher(redis, prefix).publish(result(4));
    // A reader that took the entry and died before acknowledging it.
    await redis.xreadgroup('GROUP', RESULTS_GROUP, 'dead-reader', 'COUNT', 10, 'STREAMS', key, '>');
    const seen: string[] = [];
    const c = consumer(prefix, async (r) => void seen.push(r.jobId));
    await c.start();
    await until(() => seen.length === 1);
    await c.stop();
    expect(seen).toEqual(['run-consumer-4.Build.1']);
  });

  it('parks a result that keeps failing on a dead-letter stream, and keeps pending work on stop', async () => {
    const prefix = uniquePrefix('rc');
    const key = resultsStreamKey(prefix);
    let attempts = 0;
    const c = consumer(prefix, async () => {
      attempts++;
      throw new Error('cannot apply');
    });
    await c.start();
    await createResultPublisher(redis, prefix).publish(result(5));
    await until(async () => (await redis.xlen(`${key}-dead`)) === 1, 30_000);
    expect(attempts).toBeGreaterThanOrEqual(10);
    await c.stop();
    expect(await redis.xlen(key)).toBe(0);

    const stuck = consumer(prefix, async () => {
      throw new Error('still failing');
    });
    await stuck.start();
    await createResultPublisher(redis, prefix).publish(result(6));
    await until(async () => ((await redis.xpending(key, RESULTS_GROUP)) as [number])[0] === 1);
    await stuck.stop();
    // Its consumer stays in the group, so a live reader can claim the entry.
    expect(((await redis.xpending(key, RESULTS_GROUP)) as [number])[0]).toBe(1);
  });
});
