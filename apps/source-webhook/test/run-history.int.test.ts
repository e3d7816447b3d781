import { randomUUID } from 'node:crypto';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { liveDeploymentKey, PipelineDefinition, type RunStatus } from '@conveyor/contracts';
import type { Logger } from '@conveyor/service-kit';
import { testRedis, uniquePrefix } from '@conveyor/testing';
import { RedisRetentionReader } from '../src/adapters/redis-retention-reader.js';
import { RedisRunStore, runKey } from '../src/adapters/redis-run-store.js';
import { createRun } from '../src/domain/state-machine.js';
import { loadEnv } from '../src/env.js';
import { RunHistoryPruner } from '../src/run-history-pruner.js';

const DAY = 86_400_000;
const NOW = Date.UTC(2026, 10, 1);
const trigger = { type: 'manual' as const, ref: 'refs/heads/main' };
const definitionOf = (name: string) => PipelineDefinition.parse({ name, source: { provider: 'generic', repository: 'file:///nowhere.git' }, stages: [{ name: 'Build', type: 'build' }] });

let redis: Redis;
const prefixes: string[] = [];

beforeAll(async () => {
  redis = new Redis((await testRedis()).url);
});
afterAll(async () => {
  for (const prefix of prefixes) {
    const keys = await redis.keys(`${prefix}:*`);
    if (keys.length > 0) await redis.del(...keys);
  }
  redis.disconnect();
  await (await testRedis()).stop();
});

/** One test's world: its own prefix, the real run store and reader, a pruner keeping `keepDays`. */
function world(keepDays: number) {
  const prefix = uniquePrefix('history');
  prefixes.push(prefix);
  const store = new RedisRunStore(redis, prefix);
  const logger = { info: vi.fn(), warn: vi.fn() };
  const pruner = new RunHistoryPruner({ runs: store, reader: new RedisRetentionReader(redis, prefix), logger: logger as unknown as Logger, keepDays, now: () => NOW });
  /** A run as the orchestrator stores one, created `ageDays` before NOW, in `status`. */
  async function run(pipeline: string, ageDays: number, status: RunStatus = 'SUCCEEDED'): Promise<string> {
    const createdAt = new Date(NOW - ageDays * DAY);
    const { run, events } = createRun({ id: randomUUID(), number: await store.nextRunNumber(pipeline), definition: definitionOf(pipeline), trigger }, createdAt);
    const ended = status === 'QUEUED' || status === 'RUNNING' ? {} : { finishedAt: new Date(createdAt.getTime() + 60_000).toISOString() };
    expect(await store.create({ ...run, status, ...ended }, events)).toEqual({ created: true });
    return run.id;
  }
  const listed = async (pipeline: string) => (await store.listByPipeline(pipeline, 1000)).map((r) => r.id).sort();
  return { prefix, store, logger, pruner, run, listed };
}

describe('run history retention (RunHistoryPruner over real Redis)', () => {
  it('deletes finished runs created before the cutoff, record and index entry, and keeps the rest', async () => {
    const w = world(30);
    const old = [await w.run('shop', 400), await w.run('shop', 31, 'FAILED'), await w.run('shop', 45, 'CANCELLED')];
    const running = await w.run('shop', 200, 'RUNNING');
    const queued = await w.run('shop', 90, 'QUEUED');
    const recent = await w.run('shop', 29);
    const otherOld = await w.run('web', 60);

    expect(await w.pruner.prune()).toEqual({ removed: 4 });
    expect(await w.listed('shop')).toEqual([running, queued, recent].sort());
    expect(await w.listed('web')).toEqual([]);
    for (const id of [...old, otherOld]) {
      expect(await w.store.get(id)).toBeUndefined();
      expect(await redis.exists(runKey(w.prefix, id))).toBe(0);
    }
    // Stored ended at once here, they were listed as active too: deleted runs leave that list as well.
    const active = await w.store.activeRunIds();
    expect(active).toEqual(expect.arrayContaining([running, queued]));
    for (const id of [...old, otherOld]) expect(active).not.toContain(id);
    expect(w.logger.info).toHaveBeenCalledWith({ runs: 4, keepDays: 30 }, 'removed the records of old runs');
    // Nothing left to do: a second pass removes nothing and says nothing.
    w.logger.info.mockClear();
    expect(await w.pruner.prune()).toEqual({ removed: 0 });
    expect(w.logger.info).not.toHaveBeenCalled();
  });

  it("keeps the run whose version serves now, and all of a pipeline's runs while its live record does not parse", async () => {
    const w = world(30);
    const live = await w.run('shop', 100);
    await w.run('shop', 200);
    const webRuns = [await w.run('web', 100), await w.run('web', 200)];
    await redis.set(liveDeploymentKey(w.prefix, 'shop'), JSON.stringify({ runId: live, attempt: 1, url: 'http://127.0.0.1:1' }));
    await redis.set(liveDeploymentKey(w.prefix, 'web'), '{"not":"a live record"}');

    expect(await w.pruner.prune()).toEqual({ removed: 1 });
    expect(await w.listed('shop')).toEqual([live]);
    expect(await w.listed('web')).toEqual([...webRuns].sort());
  });

  it('keeps a record that does not parse, and pages past the runs it keeps', async () => {
    const w = world(30);
    // More than a page (500) of old runs, the first ones kept (still running), one record garbled.
    const kept: string[] = [];
    for (let i = 0; i < 20; i++) kept.push(await w.run('shop', 1000 - i, 'RUNNING'));
    const garbled = await w.run('shop', 900);
    await redis.hset(runKey(w.prefix, garbled), 'json', '{"not":"a run"}');
    for (let i = 0; i < 560; i++) await w.run('shop', 800 - i / 10);

    expect(await w.pruner.prune()).toEqual({ removed: 560 });
    const left = await redis.zrange(`${w.prefix}:runs:shop`, 0, -1);
    expect(left.sort()).toEqual([...kept, garbled].sort());
    expect(await redis.hget(runKey(w.prefix, garbled), 'json')).toBe('{"not":"a run"}');
  });

  it("reads only the pipelines' run indexes: an earlier version's active set at runs:active is no pipeline", async () => {
    const w = world(30);
    const old = await w.run('shop', 100);
    await redis.sadd(`${w.prefix}:runs:active`, old);
    expect(await w.store.indexedPipelines()).toEqual(['shop']);
    expect(await w.pruner.prune()).toEqual({ removed: 1 });
    // A pipeline named active has a run index like any other.
    await redis.del(`${w.prefix}:runs:active`);
    const named = await w.run('active', 100);
    expect(await w.store.indexedPipelines()).toEqual(['active']);
    expect(await w.pruner.prune()).toEqual({ removed: 1 });
    expect(await w.store.get(named)).toBeUndefined();
  });

  it('reads RUN_HISTORY_DAYS (365 unless set; 0 keeps every run) and RETENTION_INTERVAL_MS', () => {
    const token = 'test-token-0123456789abcdef';
    expect(loadEnv({ CONVEYOR_API_TOKEN: token }).RUN_HISTORY_DAYS).toBe(365);
    expect(loadEnv({ CONVEYOR_API_TOKEN: token, RUN_HISTORY_DAYS: '0' }).RUN_HISTORY_DAYS).toBe(0);
    for (const bad of ['-1', '1.5', 'forever']) expect(() => loadEnv({ CONVEYOR_API_TOKEN: token, RUN_HISTORY_DAYS: bad })).toThrow(/RUN_HISTORY_DAYS/);
  });
});
