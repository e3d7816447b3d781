import { Redis } from 'ioredis';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { closeRedis, createLogger, createRedis, StreamGroupConsumer, type LostEntries, type StreamEntry, type StreamGroupConsumerOptions } from '@conveyor/service-kit';
import { startRedisServer } from '@conveyor/testing';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function until(what: string, ok: () => boolean | Promise<boolean>, ms = 10_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await ok())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

/** How long `work` took, or 'hung' when it had not settled after `ms`. */
async function timed(work: Promise<unknown>, ms: number): Promise<number | 'hung'> {
  const started = Date.now();
  const hung = new Promise<'hung'>((r) => setTimeout(() => r('hung'), ms).unref());
  return Promise.race([work.then(() => Date.now() - started), hung]);
}

interface Harness {
  consumer: StreamGroupConsumer;
  connection: Redis;
  handled: StreamEntry[];
  lost: LostEntries[];
  logs: { level: number; msg: string; stream?: string; count?: number }[];
}

const open: Harness[] = [];
let counter = 0;

function reader(url: string, stream: string, extra: Partial<StreamGroupConsumerOptions> = {}): Harness {
  const connection = createRedis(url, 'worker');
  connection.on('error', () => undefined); // refused while Redis is away: expected
  const handled: StreamEntry[] = [];
  const lost: LostEntries[] = [];
  const logs: Harness['logs'] = [];
  const logger = createLogger('test', 'info', { write: (line: string) => void logs.push(JSON.parse(line)) });
  const consumer = new StreamGroupConsumer({
    redis: connection,
    streams: [stream],
    group: 'g',
    name: 'test stream',
    deadLetterStream: `${stream}:dead`,
    logger,
    claimIdleMs: 50, // a maintenance pass every 50 ms
    blockMs: 100,
    handle: async (entries) => (handled.push(...entries), []),
    onEntriesLost: (l) => void lost.push(l),
    ...extra,
  });
  const h = { consumer, connection, handled, lost, logs };
  open.push(h);
  return h;
}

async function close(h: Harness): Promise<void> {
  open.splice(open.indexOf(h), 1);
  await h.consumer.stop();
  await closeRedis(h.connection);
}

/** Appends `n` entries as the orchestrator does, trimming the stream to about `maxlen`. */
async function append(redis: Redis, stream: string, n: number, maxlen = 100): Promise<void> {
  const pipeline = redis.pipeline();
  for (let i = 0; i < n; i++) pipeline.xadd(stream, 'MAXLEN', '~', maxlen, '*', 'n', String(i));
  await pipeline.exec();
}

describe('StreamGroupConsumer.stop', () => {
  it('returns within its deadline when Redis went away under a blocked read, and the caller can still close the connection at once', async () => {
    const server = await startRedisServer();
    const h = reader(server.url, 'events', { blockMs: 10_000, stopTimeoutMs: 1000 });
    open.splice(open.indexOf(h), 1); // stopped here, even when it fails
    try {
      await h.consumer.start();
      await sleep(200); // the read is blocked in XREADGROUP
      await server.stop();
      await sleep(300); // the connection now retries for ever
      const took = await timed(h.consumer.stop(), 8000);
      // Before its deadline it waits (the read may still end); after it, it gives up (no upper bound
      // asserted: the 8 s of 'hung' stand for "never", as without a deadline).
      expect(took).not.toBe('hung');
      expect(took).toBeGreaterThanOrEqual(900);
      expect(h.logs.some((l) => /did not stop in time/.test(l.msg))).toBe(true);
      // The caller's shutdown closes the connection afterwards: that must not wait on the dropped one.
      const closing = await timed(closeRedis(h.connection), 5000);
      expect(closing).not.toBe('hung');
    } finally {
      h.connection.disconnect();
      await server.stop();
    }
  }, 20_000);
});

/** One redis-server for the tests that do not kill theirs. */
let server: Awaited<ReturnType<typeof startRedisServer>>;
let redis: Redis;
let stream: string;
beforeAll(async () => {
  server = await startRedisServer();
  redis = new Redis(server.url);
});
afterAll(async () => {
  redis.disconnect();
  await server.stop();
});
afterEach(async () => {
  for (const h of open.splice(0)) {
    await h.consumer.stop();
    await closeRedis(h.connection);
  }
});

describe('StreamGroupConsumer', () => {
  const fresh = () => (stream = `s${++counter}`);

  it('stops at once and leaves the group when Redis is up', async () => {
    fresh();
    const h = reader(server.url, stream, { blockMs: 1000 });
    await h.consumer.start();
    await redis.xadd(stream, '*', 'n', '1');
    await until('entry handled', () => h.handled.length === 1);
    await until('entry acknowledged', async () => ((await redis.xpending(stream, 'g')) as [number])[0] === 0);
    const took = await timed(close(h), 8000);
    expect(took).not.toBe('hung'); // the read ends with its BLOCK at the latest
    expect(await redis.xinfo('CONSUMERS', stream, 'g')).toEqual([]);
  });

  it('does not wait past its deadline for a batch whose handling never ends; its entries stay pending for another reader', async () => {
    fresh();
    let called = false;
    const h = reader(server.url, stream, { stopTimeoutMs: 500, handle: () => ((called = true), new Promise(() => undefined)) });
    await h.consumer.start();
    await redis.xadd(stream, '*', 'n', '1');
    await until('handler called', () => called);
    const took = await timed(close(h), 8000);
    expect(took).not.toBe('hung');
    expect(((await redis.xpending(stream, 'g')) as [number])[0]).toBe(1);
  }, 20_000);
});

describe('StreamGroupConsumer, entries trimmed before they were read', () => {
  const fresh = () => (stream = `t${++counter}`);
  /** The `n` of the oldest entry left: how many of the last append were trimmed. */
  const firstN = async () => Number(((await redis.xrange(stream, '-', '+', 'COUNT', 1))[0]![1] as string[])[1]);

  it('warns once, with how many, when the stream was trimmed past the group while no reader read; not again after a restart', async () => {
    fresh();
    const first = reader(server.url, stream);
    await first.consumer.start();
    await append(redis, stream, 5);
    await until('first entries handled', () => first.handled.length === 5);
    await close(first);

    await append(redis, stream, 1000); // nobody reads: the stream keeps about 100
    const trimmed = await firstN();
    expect(trimmed).toBeGreaterThan(800);
    const left = await redis.xlen(stream);

    const second = reader(server.url, stream);
    await second.consumer.start();
    await until('what is left handled', () => second.handled.length === left);
    await sleep(300); // several more maintenance passes
    expect(second.lost).toEqual([{ stream, count: trimmed }]);
    const warnings = second.logs.filter((l) => /trimmed from the stream before this group read them/.test(l.msg));
    expect(warnings).toHaveLength(1);
    expect(warnings[0]).toMatchObject({ level: 40, stream, count: trimmed });
    await close(second);

    // Reported once, by whichever reader saw it: a restart does not count it again.
    const third = reader(server.url, stream);
    await third.consumer.start();
    await sleep(300);
    expect(third.lost).toEqual([]);

    // A second gap is counted on its own.
    await close(third);
    await append(redis, stream, 1000);
    const again = await firstN();
    const fourth = reader(server.url, stream);
    await fourth.consumer.start();
    await until('loss reported', () => fourth.lost.length === 1);
    expect(fourth.lost).toEqual([{ stream, count: again }]);
  });

  it('reports nothing when nothing unread was trimmed, or for a group made after the trimming', async () => {
    fresh();
    await append(redis, stream, 1000); // before any group
    const left = await redis.xlen(stream);
    const h = reader(server.url, stream);
    await h.consumer.start();
    await until('what is left handled', () => h.handled.length === left);
    // Read in time: trimming what was already read loses nothing.
    for (let i = 0; i < 10; i++) {
      await append(redis, stream, 100);
      await until('new entries handled', () => h.handled.length === left + 100 * (i + 1));
    }
    await sleep(200);
    expect(h.lost).toEqual([]);
  });

  it('reports a loss it cannot size once, without a count', async () => {
    fresh();
    await append(redis, stream, 5);
    const last = (await redis.xrange(stream, '-', '+')).at(-1)![0];
    // A group placed by id alone: Redis no longer knows how many entries it has read.
    await redis.xgroup('CREATE', stream, 'g', last);
    expect((await redis.xinfo('GROUPS', stream)) as unknown[][]).toEqual([expect.arrayContaining(['entries-read', null])]);
    await append(redis, stream, 1000);
    const h = reader(server.url, stream);
    await h.consumer.start();
    await until('loss reported', () => h.lost.length === 1);
    await sleep(300);
    expect(h.lost).toEqual([{ stream, count: undefined }]);
  });
});
