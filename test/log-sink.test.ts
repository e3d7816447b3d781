import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openStageLog, STAGE_LOG_MAX_BYTES, stageLogKey } from '@conveyor/service-kit';
import { testRedis } from '@conveyor/testing';

let redis: Redis;
let stop: () => Promise<void>;
const prefix = `sklog${process.pid}x${Date.now().toString(36)}`;
let jobs = 0;
const nextJob = () => `run-0000000${(jobs += 1)}.Build.1`;

beforeAll(async () => {
  const server = await testRedis();
  redis = new Redis(server.url, { maxRetriesPerRequest: null });
  stop = async () => {
    redis.disconnect();
    await server.stop();
  };
});
afterAll(async () => {
  const keys = await redis.keys(`${prefix}:log:*`);
  if (keys.length) await redis.del(...keys);
  await stop();
});

const MiB = 1024 * 1024;
const FAILED = '[conveyor] phases FAILED: test (exit 1)\n';
const MARKER = /^\[conveyor\] log truncated: (\d+) bytes left out.*$/gm;

/** What a noisy build prints: numbered lines of `fill`, about `bytes` long in UTF-8. */
function noisyOutput(bytes: number, fill = 'x'): string {
  const lines: string[] = [];
  let size = 0;
  for (let i = 0; size < bytes; i += 1) {
    const line = `line ${String(i).padStart(7, '0')} ${fill.repeat(80)}\n`;
    lines.push(line);
    size += Buffer.byteLength(line);
  }
  return lines.join('');
}

/** Writes `text` as a runner does: in pieces of up to 50 000 characters. */
function writeInPieces(log: { write(text: string): void }, text: string) {
  for (let at = 0; at < text.length; at += 50_000) log.write(text.slice(at, at + 50_000));
}

/** The stored log split at its one marker line (which the sink starts on a line of its own). */
function splitAtMarker(stored: string) {
  const markers = [...stored.matchAll(MARKER)];
  expect(markers).toHaveLength(1);
  const m = markers[0]!;
  return { head: stored.slice(0, m.index - 1), leftOut: Number(m[1]), tail: stored.slice(m.index + m[0].length + 1) };
}

describe('openStageLog, on a real Redis', () => {
  it('a job delivered again writes on in the same log, within the same limit: the first delivery\'s head, the last one\'s tail', async () => {
    const job = nextJob();
    const first = openStageLog(redis, prefix, job);
    writeInPieces(first, `FIRST\n${noisyOutput(10 * MiB, 'a')}first ended\n`);
    await first.close();
    // Its tail was longer than the next delivery's: nothing of it may be left behind the new one.
    const second = openStageLog(redis, prefix, job);
    const again = `SECOND\n${noisyOutput(2 * MiB, 'b')}${FAILED}`;
    writeInPieces(second, again);
    await second.close();
    const stored = (await redis.getBuffer(stageLogKey(prefix, job)))!;
    expect(stored.length).toBeLessThanOrEqual(STAGE_LOG_MAX_BYTES);
    const text = stored.toString();
    const { head, tail } = splitAtMarker(text);
    expect(head.startsWith('FIRST\n')).toBe(true);
    expect(tail.trimEnd().endsWith(FAILED.trimEnd())).toBe(true);
    expect(tail).not.toContain('first ended');

    // A short first delivery: the next one's lines follow it.
    const short = nextJob();
    const one = openStageLog(redis, prefix, short);
    one.write('delivery one\n');
    await one.close();
    const two = openStageLog(redis, prefix, short);
    two.write('delivery two\n');
    await two.close();
    expect(await redis.get(stageLogKey(prefix, short))).toBe('delivery one\ndelivery two\n');
  });

  it('stores a log under the limit as written, without a marker', async () => {
    const job = nextJob();
    const log = openStageLog(redis, prefix, job);
    const output = `${noisyOutput(200 * 1024)}${FAILED}`;
    writeInPieces(log, output);
    await log.close();
    expect(await redis.get(stageLogKey(prefix, job))).toBe(output);
  });

  it("keeps a capped log's head and tail (the runner's last lines), with one marker line saying how many bytes were left out", async () => {
    const job = nextJob();
    const log = openStageLog(redis, prefix, job);
    const output = `${noisyOutput(12 * MiB)}${FAILED}`;
    writeInPieces(log, output);
    await log.close();

    const stored = (await redis.getBuffer(stageLogKey(prefix, job)))!;
    // Bounded, and filled to the limit: the piece that crossed the head's limit was cut there, not dropped.
    expect(stored.length).toBe(STAGE_LOG_MAX_BYTES);
    const { head, leftOut, tail } = splitAtMarker(stored.toString());
    expect(output.startsWith(head)).toBe(true);
    expect(output.endsWith(tail)).toBe(true);
    expect(tail.endsWith(FAILED)).toBe(true);
    expect(tail.length).toBeGreaterThanOrEqual(MiB - 3);
    expect(leftOut).toBe(output.length - head.length - tail.length);
  });

  it('cuts the head and the tail between characters, never inside one', async () => {
    const job = nextJob();
    const log = openStageLog(redis, prefix, job);
    const output = `${noisyOutput(10 * MiB, '€')}${FAILED}`;
    writeInPieces(log, output);
    await log.close();

    const stored = (await redis.getBuffer(stageLogKey(prefix, job)))!;
    expect(stored.length).toBeLessThanOrEqual(STAGE_LOG_MAX_BYTES);
    const text = stored.toString();
    expect(text).not.toContain('\uFFFD');
    const { head, leftOut, tail } = splitAtMarker(text);
    expect(output.startsWith(head)).toBe(true);
    expect(output.endsWith(tail)).toBe(true);
    expect(leftOut).toBe(Buffer.byteLength(output) - Buffer.byteLength(head) - Buffer.byteLength(tail));
  });

  it('shows the latest output of a capped log while the stage still runs', async () => {
    const job = nextJob();
    const log = openStageLog(redis, prefix, job);
    writeInPieces(log, noisyOutput(9 * MiB));
    log.write('still running: step 42\n');
    const deadline = Date.now() + 5000;
    let stored = '';
    while (Date.now() < deadline && !stored.endsWith('still running: step 42\n')) {
      await new Promise((r) => setTimeout(r, 100));
      stored = (await redis.get(stageLogKey(prefix, job))) ?? '';
    }
    await log.close();
    expect(stored.endsWith('still running: step 42\n')).toBe(true);
    expect([...stored.matchAll(MARKER)]).toHaveLength(1);
  });

  it('sends Redis about as much as it keeps, however much is written past the limit', async () => {
    const job = nextJob();
    let sent = 0;
    // Counts the bytes of every value the sink writes, through the real client.
    const counting = new Proxy(redis, {
      get(target, prop, receiver) {
        if (prop !== 'multi') return Reflect.get(target, prop, receiver);
        return () => {
          const tx = target.multi();
          return new Proxy(tx, {
            get(t, p, r) {
              const fn = Reflect.get(t, p, r);
              if (p !== 'append' && p !== 'setrange' && p !== 'set') return typeof fn === 'function' ? fn.bind(t) : fn;
              return (...args: unknown[]) => {
                const value = args[args.length - 1] as string | Buffer;
                sent += Buffer.byteLength(value);
                fn.apply(t, args);
                return r;
              };
            },
          });
        };
      },
    });
    const log = openStageLog(counting, prefix, job);
    writeInPieces(log, `${noisyOutput(40 * MiB)}${FAILED}`);
    await log.close();
    const stored = (await redis.get(stageLogKey(prefix, job)))!;
    expect(stored.endsWith(FAILED)).toBe(true);
    expect(sent).toBeLessThanOrEqual(STAGE_LOG_MAX_BYTES + 3 * MiB);
  });
});
