import { Queue, UnrecoverableError, Worker } from 'bullmq';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { QUEUES, type StageResult } from '@conveyor/contracts';
import { createLogger, createQueue, stageEventsKey, STAGE_EVENTS_MAXLEN } from '@conveyor/service-kit';
import { testRedis, uniquePrefix } from '@conveyor/testing';
import { RESULTS_GROUP, ResultsConsumer } from '../src/jobs/results-consumer.js';
import type { RunInputFor } from '../src/orchestrator.js';

let url: string;
let redis: Redis;
const logger = createLogger('test', 'silent');
const closers: (() => Promise<unknown>)[] = [];

const result = (n: number, jobId = `run-consumer-${n}.Build.1`): StageResult => ({
  v: 1, jobId, runId: `run-consumer-${n}`, stage: 'Build', stageIndex: 1, attempt: 1, status: 'SUCCEEDED',
  startedAt: new Date().toISOString(), finishedAt: new Date().toISOString(), output: {},
});

async function until(check: () => Promise<boolean> | boolean, ms = 15_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error('timed out');
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** An orchestrator stand-in that hands each input to `handle`; a throw means "not applied". */
function consumer(prefix: string, handle: (item: RunInputFor) => Promise<void>) {
  const orchestrator = {
    async handleInputs(items: RunInputFor[]) {
      const failed: RunInputFor[] = [];
      for (const item of items) await handle(item).catch(() => failed.push(item));
      return failed;
    },
  };
  const c = new ResultsConsumer({ redis: new Redis(url, { maxRetriesPerRequest: null }), prefix, orchestrator, logger, queues: [QUEUES.build], claimIdleMs: 200, blockMs: 100 });
  return c;
}

/** A real BullMQ build queue whose worker completes each job with what `processor` returns. */
function buildQueue(prefix: string, processor: (data: { n: number; bad?: string }) => unknown) {
  const queue = createQueue(QUEUES.build, { connection: new Redis(url, { maxRetriesPerRequest: null }), prefix });
  const worker = new Worker(QUEUES.build, async (job) => processor(job.data), { connection: new Redis(url, { maxRetriesPerRequest: null }), prefix });
  closers.push(() => worker.close(), () => queue.close());
  return queue;
}

const pending = async (prefix: string) => ((await redis.xpending(stageEventsKey(prefix, QUEUES.build), RESULTS_GROUP)) as [number])[0];

beforeAll(async () => {
  url = (await testRedis()).url;
  redis = new Redis(url);
});
afterAll(async () => {
  for (const close of closers) await close();
  redis.disconnect();
  await (await testRedis()).stop();
});

describe('ResultsConsumer', () => {
  it('applies the StageResult each job completed with, and acknowledges every event it read', async () => {
    const prefix = uniquePrefix('rc');
    const seen: RunInputFor[] = [];
    const c = consumer(prefix, async (item) => void seen.push(item));
    await c.start();
    const queue = buildQueue(prefix, ({ n }) => result(n));
    for (const n of [1, 2, 3]) await queue.add('build', { n }, { jobId: `run-consumer-${n}.Build.1` });
    await until(() => seen.length === 3);
    await c.stop();
    expect(seen.map((s) => [s.runId, s.input.type]).sort()).toEqual([
      ['run-consumer-1', 'stage-result'],
      ['run-consumer-2', 'stage-result'],
      ['run-consumer-3', 'stage-result'],
    ]);
    // added/waiting/active events are read too, and acknowledged without an input.
    expect(await pending(prefix)).toBe(0);
    // The queue keeps its event stream long enough for an orchestrator that was away.
    expect(await redis.hget(`${prefix}:${QUEUES.build}:meta`, 'opts.maxLenEvents')).toBe(String(STAGE_EVENTS_MAXLEN));
  });

  it('turns a job that failed for good, or completed without a valid result, into a lost stage', async () => {
    const prefix = uniquePrefix('rc');
    const seen: RunInputFor[] = [];
    const c = consumer(prefix, async (item) => void seen.push(item));
    await c.start();
    const queue = buildQueue(prefix, ({ n, bad }) => {
      if (bad === 'throw') throw new UnrecoverableError('malformed build job');
      if (bad === 'garbage') return { status: 'done' };
      return result(n, `run-consumer-${n + 100}.Build.1`); // someone else's job id
    });
    await queue.add('build', { n: 7, bad: 'throw' }, { jobId: 'run-consumer-7.Build.1', attempts: 3 });
    await queue.add('build', { n: 8, bad: 'garbage' }, { jobId: 'run-consumer-8.Build.1' });
    await queue.add('build', { n: 9 }, { jobId: 'run-consumer-9.Build.1' });
    // A job that is not a stage job of ours: read and skipped.
    await queue.add('build', { n: 10 }, { jobId: 'not-a-stage-job' });
    const completed = async (jobId: string) => (await redis.xrange(stageEventsKey(prefix, QUEUES.build), '-', '+')).some(([, f]) => f[1] === 'completed' && f[3] === jobId);
    await until(async () => seen.length === 3 && (await completed('not-a-stage-job')) && (await pending(prefix)) === 0);
    await c.stop();
    // The job that is not one of ours was read and acknowledged without becoming an input.
    expect(seen).toHaveLength(3);
    const byRun = Object.fromEntries(seen.map((s) => [s.runId, s.input]));
    expect(byRun['run-consumer-7']).toEqual({ type: 'stage-lost', jobId: 'run-consumer-7.Build.1', reason: 'malformed build job' });
    expect(byRun['run-consumer-8']).toMatchObject({ type: 'stage-lost', jobId: 'run-consumer-8.Build.1', reason: expect.stringMatching(/without a valid result/) });
    expect(byRun['run-consumer-9']).toMatchObject({ type: 'stage-lost', jobId: 'run-consumer-9.Build.1' });
  });

  it('applies only the final outcome of a job that failed before it succeeded', async () => {
    const prefix = uniquePrefix('rc');
    const seen: RunInputFor[] = [];
    const c = consumer(prefix, async (item) => void seen.push(item));
    await c.start();
    let calls = 0;
    const queue = buildQueue(prefix, ({ n }) => {
      if (++calls === 1) throw new Error('transient');
      return result(n);
    });
    await queue.add('build', { n: 12 }, { jobId: 'run-consumer-12.Build.1', attempts: 2, backoff: { type: 'fixed', delay: 10 } });
    await until(async () => seen.length === 1 && (await pending(prefix)) === 0);
    await new Promise((r) => setTimeout(r, 300));
    await c.stop();
    expect(calls).toBe(2);
    expect(seen.map((s) => s.input.type)).toEqual(['stage-result']);
  });

  it('keeps the stage queues\' event retention even when something resets it', async () => {
    const prefix = uniquePrefix('rc');
    const meta = `${prefix}:${QUEUES.build}:meta`;
    // A Queue made without Conveyor's options (a dashboard, a script) writes BullMQ's default.
    const plain = new Queue(QUEUES.build, { connection: new Redis(url, { maxRetriesPerRequest: null }), prefix });
    await plain.waitUntilReady();
    await until(async () => (await redis.hget(meta, 'opts.maxLenEvents')) === '10000');
    const c = consumer(prefix, async () => undefined);
    await c.start();
    expect(await redis.hget(meta, 'opts.maxLenEvents')).toBe(String(STAGE_EVENTS_MAXLEN));
    await redis.hset(meta, 'opts.maxLenEvents', 10_000);
    // ...and is set again on the consumer's next maintenance pass (every claimIdleMs here).
    await until(async () => (await redis.hget(meta, 'opts.maxLenEvents')) === String(STAGE_EVENTS_MAXLEN));
    await c.stop();
    await plain.close();
  });

  it('takes over what a dead reader left unacknowledged', async () => {
    const prefix = uniquePrefix('rc');
    const key = stageEventsKey(prefix, QUEUES.build);
    await redis.xgroup('CREATE', key, RESULTS_GROUP, '0', 'MKSTREAM');
    const queue = buildQueue(prefix, ({ n }) => result(n));
    await queue.add('build', { n: 4 }, { jobId: 'run-consumer-4.Build.1' });
    await until(async () => (await redis.xrange(key, '-', '+')).some(([, f]) => f.includes('completed')));
    // A reader that took every entry and died before acknowledging them.
    await redis.xreadgroup('GROUP', RESULTS_GROUP, 'dead-reader', 'COUNT', 100, 'STREAMS', key, '>');
    const seen: string[] = [];
    const c = consumer(prefix, async (item) => void seen.push(item.runId));
    await c.start();
    await until(() => seen.length === 1);
    await c.stop();
    expect(seen).toEqual(['run-consumer-4']);
  });

  it('parks an outcome that keeps failing on a dead-letter stream, and keeps pending work on stop', async () => {
    const prefix = uniquePrefix('rc');
    let attempts = 0;
    const c = consumer(prefix, async () => {
      attempts++;
      throw new Error('cannot apply');
    });
    await c.start();
    const queue = buildQueue(prefix, ({ n }) => result(n));
    await queue.add('build', { n: 5 }, { jobId: 'run-consumer-5.Build.1' });
    await until(async () => (await redis.xlen(`${prefix}:results-dead`)) === 1, 30_000);
    expect(attempts).toBeGreaterThanOrEqual(10);
    const fields = (await redis.xrange(`${prefix}:results-dead`, '-', '+'))[0]![1];
    expect(fields).toEqual(expect.arrayContaining(['stream', stageEventsKey(prefix, QUEUES.build), 'event', 'completed', 'jobId', 'run-consumer-5.Build.1']));
    await c.stop();
    expect(await pending(prefix)).toBe(0);

    const stuck = consumer(prefix, async () => {
      throw new Error('still failing');
    });
    await stuck.start();
    await queue.add('build', { n: 6 }, { jobId: 'run-consumer-6.Build.1' });
    // Wait until the only entry left pending is the completed event that cannot be applied.
    const key = stageEventsKey(prefix, QUEUES.build);
    await until(async () => {
      const done = (await redis.xrange(key, '-', '+')).find(([, f]) => f[1] === 'completed' && f[3] === 'run-consumer-6.Build.1');
      const rows = (await redis.xpending(key, RESULTS_GROUP, '-', '+', 10)) as [string][];
      return done !== undefined && rows.length === 1 && rows[0]![0] === done[0];
    });
    await stuck.stop();
    // Its consumer stays in the group, so a live reader can claim the entry.
    expect(await pending(prefix)).toBe(1);
  });

  it('drops readers that died with nothing pending, and keeps those that hold entries', async () => {
    const prefix = uniquePrefix('rc');
    const key = stageEventsKey(prefix, QUEUES.build);
    await redis.xgroup('CREATE', key, RESULTS_GROUP, '0', 'MKSTREAM');
    await redis.xadd(key, '*', 'event', 'added', 'jobId', 'x');
    await redis.xadd(key, '*', 'event', 'added', 'jobId', 'y');
    await redis.xreadgroup('GROUP', RESULTS_GROUP, 'dead-holding', 'COUNT', 1, 'STREAMS', key, '>');
    const read = (await redis.xreadgroup('GROUP', RESULTS_GROUP, 'dead-empty', 'COUNT', 1, 'STREAMS', key, '>')) as [string, [string][]][];
    await redis.xack(key, RESULTS_GROUP, read[0]![1][0]![0]);
    await new Promise((r) => setTimeout(r, 100));
    const names = async () => ((await redis.xinfo('CONSUMERS', key, RESULTS_GROUP)) as string[][]).map((row) => row[1]);
    expect((await names()).sort()).toEqual(['dead-empty', 'dead-holding']);
    const orchestrator = { handleInputs: async () => [] };
    // Claiming waits 60 s, so the entry 'dead-holding' holds stays its own during this test.
    const c = new ResultsConsumer({ redis: new Redis(url, { maxRetriesPerRequest: null }), prefix, orchestrator, logger, queues: [QUEUES.build], claimIdleMs: 60_000, blockMs: 100, forgetConsumersIdleMs: 50 });
    await c.start();
    await until(async () => !(await names()).includes('dead-empty'));
    expect(await names()).toContain('dead-holding');
    await c.stop();
  });

  it('recreates its group when the stream is deleted under it (a queue obliterated)', async () => {
    const prefix = uniquePrefix('rc');
    const seen: string[] = [];
    const c = consumer(prefix, async (item) => void seen.push(item.runId));
    await c.start();
    await redis.del(stageEventsKey(prefix, QUEUES.build));
    const queue = buildQueue(prefix, ({ n }) => result(n));
    await queue.add('build', { n: 11 }, { jobId: 'run-consumer-11.Build.1' });
    await until(() => seen.includes('run-consumer-11'));
    await c.stop();
  });
});
