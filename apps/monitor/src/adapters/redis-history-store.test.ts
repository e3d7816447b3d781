import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { testRedis, uniquePrefix } from '@conveyor/testing';
import type { HistoryEntry } from '../domain/history.js';
import { RedisHistoryStore } from './redis-history-store.js';

let redis: Redis;
let stopRedis: () => Promise<void>;
beforeAll(async () => {
  const server = await testRedis();
  stopRedis = server.stop;
  redis = new Redis(server.url);
});
afterAll(async () => {
  await redis.quit();
  await stopRedis();
});

const entry = (runId: string, s: number): HistoryEntry => ({ runId, pipeline: 'shop', status: 'SUCCEEDED', durationMs: 1000, finishedAt: new Date(Date.UTC(2025, 0, 1, 0, 0, s)).toISOString() });

describe('RedisHistoryStore', () => {
  it('keeps the newest runs, overall and per pipeline', async () => {
    const prefix = uniquePrefix('hist');
    const store = new RedisHistoryStore(redis, redis, prefix, 2, 365, () => Date.UTC(2025, 0, 2));
    for (const [i, id] of ['run-00000001', 'run-00000002', 'run-00000003'].entries()) await store.record(entry(id, i));
    expect((await store.recent({ limit: 10 })).map((e) => e.runId)).toEqual(['run-00000003', 'run-00000002']);
    expect((await store.recent({ pipeline: 'shop', limit: 10 })).map((e) => e.runId)).toEqual(['run-00000003', 'run-00000002']);
    await redis.del(`${prefix}:history`, `${prefix}:history:pipeline:shop`);
  });

  it("drops runs that finished more than its days ago, and expires a pipeline's history nothing was written to as long", async () => {
    const prefix = uniquePrefix('hist');
    let now = Date.UTC(2025, 0, 1, 0, 0, 10);
    const store = new RedisHistoryStore(redis, redis, prefix, 100, 2, () => now);
    await store.record(entry('run-00000001', 1));
    now += 2 * 86_400_000 + 5000; // run 1 finished 2 days and 14 s ago
    await store.record({ ...entry('run-00000002', 2), finishedAt: new Date(now).toISOString() });
    expect((await store.recent({ limit: 10 })).map((e) => e.runId)).toEqual(['run-00000002']);
    expect((await store.recent({ pipeline: 'shop', limit: 10 })).map((e) => e.runId)).toEqual(['run-00000002']);
    for (const key of [`${prefix}:history`, `${prefix}:history:pipeline:shop`]) {
      const ttl = await redis.pttl(key);
      expect(ttl).toBeGreaterThan(2 * 86_400_000 - 60_000);
      expect(ttl).toBeLessThanOrEqual(2 * 86_400_000);
    }
    await redis.del(`${prefix}:history`, `${prefix}:history:pipeline:shop`);
  });

  it('throws when a command of its transaction fails, so the event is not acknowledged unstored', async () => {
    const prefix = uniquePrefix('hist');
    await redis.set(`${prefix}:history:pipeline:shop`, 'not a sorted set');
    const store = new RedisHistoryStore(redis, redis, prefix, 10);
    await expect(store.record(entry('run-00000001', 1))).rejects.toThrow(/WRONGTYPE/);
    await redis.del(`${prefix}:history`, `${prefix}:history:pipeline:shop`);
  });
});
