import { Queue } from 'bullmq';
import { Redis, type RedisOptions } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it, onTestFinished } from 'vitest';
import { cancelChannel, cancelledJobKey, QUEUES, StageResult, type StageJob } from '@conveyor/contracts';
import { BullJobDispatcher } from '@conveyor/source-webhook';
import { StageHarness, testRedis, uniquePrefix } from '@conveyor/testing';
import { closeWorker, createLogger, createStageWorker, PermanentJobError, RUN_CANCELLED, stageEventsKey, type StageHandler } from '@conveyor/service-kit';

let url: string;
const logger = createLogger('test', 'silent');
const conns: Redis[] = [];
const conn = (connectionName?: string, options: RedisOptions = {}) => {
  const r = new Redis(url, { maxRetriesPerRequest: null, ...(connectionName ? { connectionName } : {}), ...options });
  conns.push(r);
  return r;
};

beforeAll(async () => {
  url = (await testRedis()).url;
});
afterAll(async () => {
  conns.forEach((c) => c.disconnect());
  await (await testRedis()).stop();
});

const job = (n: number): StageJob => ({
  v: 1, type: 'monitor', jobId: `run-worker-${n}.Monitor.1`, runId: `run-worker-${n}`, runNumber: n, pipeline: 'p', stage: 'Monitor', stageIndex: 4, attempt: 1,
  trigger: { type: 'manual', ref: 'refs/heads/main' }, url: 'http://127.0.0.1:1/', verify: { healthPath: '/', durationSeconds: 1, intervalSeconds: 1, maxFailures: 0, timeoutMs: 100 },
});

/** A monitor stage worker; its connections (the cancel listener's included) are named `prefix`. */
function worker(prefix: string, handler: StageHandler<'monitor'>, options: RedisOptions = {}) {
  return createStageWorker({ type: 'monitor', queueName: QUEUES.monitor, connection: conn(prefix, options), prefix, handler, logger, concurrency: 1, lockDuration: 30_000, stalledInterval: 30_000 });
}

/**
 * A test's prefix, a connection, its monitor queue (closed after the test), and the orchestrator's cancel
 * of a job: mark, log, removal, notice (BullJobDispatcher.cancel).
 */
function cancelling() {
  const prefix = uniquePrefix('sw');
  const redis = conn();
  const queue = new Queue(QUEUES.monitor, { connection: conn(), prefix });
  onTestFinished(() => queue.close());
  const cancel = (jobId: string) => new BullJobDispatcher(new Map([[QUEUES.monitor, queue]]), { redis, prefix }).cancel([{ type: 'monitor', jobId }]);
  return { prefix, redis, queue, cancel };
}

/** A signal's abort, as a promise. */
const aborted = (signal: AbortSignal) => new Promise((r) => signal.addEventListener('abort', r, { once: true }));

/** A promise that resolves once `mark()` is called: "the handler has started". */
function latch() {
  let mark!: () => void;
  const reached = new Promise<void>((r) => (mark = r));
  return { mark, reached };
}

describe('createStageWorker', () => {
  it('turns a PermanentJobError into a FAILED result with its message', async () => {
    const prefix = uniquePrefix('sw');
    const w = worker(prefix, async () => {
      throw new PermanentJobError('the input can never work');
    });
    const harness = new StageHarness(url, prefix);
    await harness.enqueue(QUEUES.monitor, job(1));
    expect(await harness.result(job(1).jobId)).toMatchObject({ status: 'FAILED', message: 'the input can never work' });
    await w.close();
    await harness.close();
  });

  it('completes the job with the StageResult as its BullMQ return value', async () => {
    const prefix = uniquePrefix('sw');
    const w = worker(prefix, async () => ({ status: 'SUCCEEDED', output: { url: 'http://127.0.0.1:1/' } }));
    const queue = new Queue(QUEUES.monitor, { connection: conn(), prefix });
    await queue.add('monitor', job(3), { jobId: job(3).jobId });
    const harness = new StageHarness(url, prefix);
    await harness.enqueue(QUEUES.monitor, job(4));
    await harness.result(job(4).jobId);
    const done = (await queue.getJob(job(3).jobId))!;
    expect(await done.getState()).toBe('completed');
    expect(StageResult.parse(done.returnvalue)).toMatchObject({ jobId: job(3).jobId, runId: 'run-worker-3', status: 'SUCCEEDED', output: { url: 'http://127.0.0.1:1/' } });
    await w.close();
    await harness.close();
    await queue.close();
  });

  it.each([
    ['an output that does not fit the contract', 5, { status: 'SUCCEEDED', output: { url: 42 } }, /monitor stage produced an invalid result: output\.url/],
    ['a status the contract does not know', 6, { status: 'DONE', output: { url: 'http://127.0.0.1:1/' } }, /monitor stage produced an invalid result: status: must be SUCCEEDED or FAILED, not DONE/],
  ])('fails the stage once, without running it again, when the handler returns %s', async (_case, n, returned, message) => {
    const prefix = uniquePrefix('sw');
    let calls = 0;
    const w = worker(prefix, async () => {
      calls++;
      return returned as never;
    });
    const harness = new StageHarness(url, prefix);
    await harness.enqueue(QUEUES.monitor, job(n));
    const result = await harness.result(job(n).jobId);
    expect(result).toMatchObject({ status: 'FAILED', output: {} });
    expect(result.message).toMatch(message);
    expect(calls).toBe(1);
    await w.close();
    await harness.close();
  });

  /** Resolves once the worker's cancel listener is subscribed. */
  async function listening(prefix: string) {
    const redis = conn();
    for (let i = 0; i < 200; i++) {
      const [, count] = (await redis.pubsub('NUMSUB', cancelChannel(prefix))) as [string, number];
      if (Number(count) > 0) return redis;
      await new Promise((r) => setTimeout(r, 10));
    }
    throw new Error('the worker never listened for cancel notices');
  }

  it('stops the job whose run was cancelled: the handler is aborted, and the job completes once, FAILED, not retried', async () => {
    const prefix = uniquePrefix('sw');
    let calls = 0;
    let reason: unknown;
    const { mark: started, reached: running } = latch();
    const w = worker(prefix, async (_job, ctx) => {
      calls++;
      started();
      await aborted(ctx.signal);
      reason = ctx.signal.reason;
      throw new Error('aborted build');
    });
    const publisher = await listening(prefix);
    const harness = new StageHarness(url, prefix);
    await harness.enqueue(QUEUES.monitor, job(7));
    await running;
    await publisher.publish(cancelChannel(prefix), job(7).jobId);
    expect(await harness.result(job(7).jobId)).toMatchObject({ status: 'FAILED', message: 'stopped: the run was cancelled' });
    expect(reason).toBe(RUN_CANCELLED);
    expect(calls).toBe(1);
    await w.close();
    await harness.close();
  });

  it('does not start a job whose cancel notice came before a worker took it, and runs the others', async () => {
    const prefix = uniquePrefix('sw');
    const ran: string[] = [];
    const { mark: started, reached: blocking } = latch();
    const blocker = job(11);
    const w = worker(prefix, async (j, ctx) => {
      ran.push(j.jobId);
      if (j.jobId !== blocker.jobId) return { status: 'SUCCEEDED', output: {} };
      started();
      await aborted(ctx.signal);
      throw new Error('stopped');
    });
    const publisher = await listening(prefix);
    const harness = new StageHarness(url, prefix);
    await harness.enqueue(QUEUES.monitor, blocker);
    await blocking;
    // Notices arrive in order on one connection: once the blocker's is heard, job 8's was heard before it.
    await publisher.publish(cancelChannel(prefix), job(8).jobId);
    await publisher.publish(cancelChannel(prefix), blocker.jobId);
    expect(await harness.result(blocker.jobId)).toMatchObject({ status: 'FAILED', message: 'stopped: the run was cancelled' });
    await harness.enqueue(QUEUES.monitor, job(8));
    await harness.enqueue(QUEUES.monitor, job(9));
    expect(await harness.result(job(8).jobId)).toMatchObject({ status: 'FAILED', message: 'not started: the run was cancelled' });
    expect(await harness.result(job(9).jobId)).toMatchObject({ status: 'SUCCEEDED' });
    expect(ran).toEqual([blocker.jobId, job(9).jobId]);
    await w.close();
    await harness.close();
  });

  it('does not start a job cancelled before the worker was listening (the notices log, or the mark until the log is read)', async () => {
    const { prefix, cancel } = cancelling();
    // The orchestrator cancels the job (mark, log, removal, notice: heard by nobody); an enqueue racing the
    // cancel then puts it in the queue again, and a worker started later takes it.
    await cancel(job(12).jobId);
    const harness = new StageHarness(url, prefix);
    await harness.enqueue(QUEUES.monitor, job(12));
    let calls = 0;
    const w = worker(prefix, async () => {
      calls++;
      return { status: 'SUCCEEDED', output: {} };
    });
    expect(await harness.result(job(12).jobId)).toMatchObject({ status: 'FAILED', message: 'not started: the run was cancelled' });
    expect(calls).toBe(0);
    await w.close();
    await harness.close();
  });

  it('stops the job it holds when the notice was published while its listening connection was down', async () => {
    const { prefix, redis, cancel } = cancelling();
    const { mark: started, reached: running } = latch();
    // Reconnecting after 500 ms (not ioredis's 50): the cancel below surely lands while it is away.
    const w = worker(
      prefix,
      async (_job, ctx) => {
        started();
        await aborted(ctx.signal);
        throw new Error('stopped');
      },
      { retryStrategy: () => 500 },
    );
    await listening(prefix);
    const harness = new StageHarness(url, prefix);
    await harness.enqueue(QUEUES.monitor, job(13));
    await running;
    // Cut the listener's connection (the one of the worker's connections that is subscribed): once
    // CLIENT KILL answers, Redis has dropped its subscription, and the client waits before reconnecting.
    const clients = (await redis.call('CLIENT', 'LIST', 'TYPE', 'pubsub')) as string;
    const listener = clients.split('\n').find((line) => line.includes(` name=${prefix} `));
    expect(listener).toBeDefined();
    await redis.client('KILL', 'ID', /id=(\d+)/.exec(listener!)![1]!);
    const [, subscribers] = (await redis.pubsub('NUMSUB', cancelChannel(prefix))) as [string, number];
    expect(Number(subscribers)).toBe(0);
    await cancel(job(13).jobId);
    expect(await harness.result(job(13).jobId, 15_000)).toMatchObject({ status: 'FAILED', message: 'stopped: the run was cancelled' });
    await w.close();
    await harness.close();
  });

  it('does not start a job that waited in its queue longer than the notices are kept, when its run was cancelled (the durable mark, read for old jobs)', async () => {
    const { prefix, redis, queue } = cancelling();
    const ran: string[] = [];
    const w = worker(prefix, async (j) => {
      ran.push(j.jobId);
      return { status: 'SUCCEEDED', output: {} };
    });
    await listening(prefix);
    const harness = new StageHarness(url, prefix);
    // Caught up: a fresh job with a mark but no notice runs (a caught-up worker does not read marks for
    // fresh first deliveries). Until the worker has read the notices log it asks the mark for every job,
    // so each probe is a new job until one runs.
    let probe = 0;
    for (;;) {
      const p = job(100 + probe++);
      await redis.set(cancelledJobKey(prefix, p.jobId), '1');
      await harness.enqueue(QUEUES.monitor, p);
      if ((await harness.result(p.jobId)).status === 'SUCCEEDED') break;
      if (probe > 50) throw new Error('the worker never caught up with the notices log');
    }
    // A job enqueued 11 minutes ago whose run was cancelled then: its notice and its log entry are gone,
    // only the mark remains.
    const old = job(15);
    await redis.set(cancelledJobKey(prefix, old.jobId), '1');
    await queue.add(old.type, old, { jobId: old.jobId, timestamp: Date.now() - 11 * 60_000 });
    expect(await harness.result(old.jobId)).toMatchObject({ status: 'FAILED', message: 'not started: the run was cancelled' });
    expect(ran).not.toContain(old.jobId);
    await w.close();
    await harness.close();
  });

  it('does not run again a redelivered job whose run was cancelled meanwhile (the durable mark, read on redelivery)', async () => {
    const prefix = uniquePrefix('sw');
    const redis = conn();
    let calls = 0;
    const w = worker(prefix, async () => {
      calls++;
      // The run is cancelled while this attempt runs, and its notice is lost (only the mark remains);
      // then the attempt fails, to be delivered again.
      await redis.set(cancelledJobKey(prefix, job(14).jobId), '1');
      throw new Error('transient failure');
    });
    const harness = new StageHarness(url, prefix);
    // Two attempts (the harness's), the second after the queue's 1 s backoff.
    await harness.enqueue(QUEUES.monitor, job(14));
    expect(await harness.result(job(14).jobId)).toMatchObject({ status: 'FAILED', message: 'not started: the run was cancelled' });
    expect(calls).toBe(1);
    await w.close();
    await harness.close();
  });

  it('tells a handler retried after an error why the last delivery failed (not that a worker died)', async () => {
    const prefix = uniquePrefix('sw');
    const seen: { deliveries: number; previousError?: string }[] = [];
    const w = worker(prefix, async (_job, ctx) => {
      seen.push({ deliveries: ctx.deliveries, ...(ctx.previousError ? { previousError: ctx.previousError } : {}) });
      if (seen.length === 1) throw new Error('disk full for a moment');
      return { status: 'SUCCEEDED', output: {} };
    });
    const harness = new StageHarness(url, prefix);
    await harness.enqueue(QUEUES.monitor, job(15));
    expect(await harness.result(job(15).jobId)).toMatchObject({ status: 'SUCCEEDED' });
    expect(seen).toEqual([{ deliveries: 0 }, { deliveries: 1, previousError: 'disk full for a moment' }]);
    await w.close();
    await harness.close();
  });

  it('reports what a handler did when it completed although the notice came (too late to stop it)', async () => {
    const prefix = uniquePrefix('sw');
    const { mark: started, reached: running } = latch();
    const w = worker(prefix, async (_job, ctx) => {
      started();
      // Past its point of no return: it hears the abort and completes all the same.
      await aborted(ctx.signal);
      return { status: 'SUCCEEDED', output: { url: 'http://127.0.0.1:1/' } };
    });
    const publisher = await listening(prefix);
    const harness = new StageHarness(url, prefix);
    await harness.enqueue(QUEUES.monitor, job(10));
    await running;
    await publisher.publish(cancelChannel(prefix), job(10).jobId);
    expect(await harness.result(job(10).jobId)).toMatchObject({ status: 'SUCCEEDED', output: { url: 'http://127.0.0.1:1/' } });
    await w.close();
    await harness.close();
  });

  it('hands a job that outlasts the shutdown drain back to the queue, unspent and unreported', async () => {
    const prefix = uniquePrefix('sw');
    const { mark: started, reached: running } = latch();
    const w = worker(prefix, async (_job, ctx) => {
      started();
      await aborted(ctx.signal);
      return { status: 'FAILED', message: 'stopped' };
    });
    const queue = new Queue(QUEUES.monitor, { connection: conn(), prefix });
    await queue.add('monitor', job(2), { jobId: job(2).jobId, attempts: 3 });
    await running;
    await closeWorker(w, 200, logger);
    const back = (await queue.getJob(job(2).jobId))!;
    expect(await back.getState()).toBe('waiting');
    expect(back.attemptsMade).toBe(0);
    // No outcome was reported: the events stream holds no completed or failed event.
    const events = (await conn().xrange(stageEventsKey(prefix, QUEUES.monitor), '-', '+')).map(([, f]) => f[1]);
    expect(events).not.toContain('completed');
    expect(events).not.toContain('failed');
    await queue.close();
  });
});
