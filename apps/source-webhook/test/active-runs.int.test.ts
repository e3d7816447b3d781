import { randomUUID } from 'node:crypto';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PipelineDefinition, type Run } from '@conveyor/contracts';
import { createLogger } from '@conveyor/service-kit';
import { testRedis, uniquePrefix } from '@conveyor/testing';
import { RedisRunStore } from '../src/adapters/redis-run-store.js';
import { createRun, step } from '../src/domain/state-machine.js';
import { Orchestrator } from '../src/orchestrator.js';
import type { JobDispatcher } from '../src/ports.js';

let url: string;
let redis: Redis;
const trigger = { type: 'manual' as const, ref: 'refs/heads/main' };
const pipeline = (name: string) =>
  PipelineDefinition.parse({ name, source: { provider: 'generic', repository: 'file:///nowhere.git' }, stages: [{ name: 'Build', type: 'build' }] });

beforeAll(async () => {
  url = (await testRedis()).url;
  redis = new Redis(url);
});
afterAll(async () => {
  for (const prefix of prefixes) {
    const keys = await redis.keys(`${prefix}:*`);
    if (keys.length > 0) await redis.del(...keys);
  }
  redis.disconnect();
  await (await testRedis()).stop();
});

/** A prefix of this file's, its keys deleted at the end. */
const prefixes: string[] = [];
function prefixFor(name: string): string {
  const prefix = uniquePrefix(name);
  prefixes.push(prefix);
  return prefix;
}

async function stored(store: RedisRunStore, name: string, at = new Date()): Promise<Run> {
  const { run, events } = createRun({ id: randomUUID(), number: 1, definition: pipeline(name), trigger }, at);
  expect(await store.create(run, events)).toEqual({ created: true });
  return run;
}

/** Ends a run through the store, as this version does. */
async function end(store: RedisRunStore, run: Run): Promise<void> {
  const ended = step(run, { type: 'cancel', reason: 'test' }, new Date());
  expect(await store.update([{ run: { ...ended.run, version: run.version + 1 }, expectedVersion: run.version, events: ended.events }])).toEqual([true]);
}

const sorted = async (ids: Promise<string[]>) => (await ids).sort();

describe('a pipeline named active', () => {
  it('lists its runs, and the active runs, each without the other', async () => {
    const prefix = prefixFor('named-active');
    const store = new RedisRunStore(redis, prefix);
    const first = await stored(store, 'active', new Date(Date.UTC(2026, 0, 1, 12, 0, 0)));
    const second = await stored(store, 'active', new Date(Date.UTC(2026, 0, 1, 12, 0, 1)));
    const other = await stored(store, 'other');
    expect(await sorted(store.activeRunIds())).toEqual([first.id, second.id, other.id].sort());
    expect((await store.listByPipeline('active', 10)).map((r) => r.id)).toEqual([second.id, first.id]);

    await end(store, first);
    expect(await sorted(store.activeRunIds())).toEqual([second.id, other.id].sort());
    const listed = await store.listByPipeline('active', 10);
    expect(listed.map((r) => [r.id, r.status])).toEqual([
      [second.id, 'RUNNING'],
      [first.id, 'CANCELLED'],
    ]);
    // Its index is untouched by reading the active runs (which looks for an earlier version's set there).
    expect(await redis.type(`${prefix}:runs:active`)).toBe('zset');
    expect(await redis.zrange(`${prefix}:runs:active`, 0, -1)).toEqual([first.id, second.id]);
  });
});

describe('the active set of earlier versions, a SET at runs:active', () => {
  it('is folded into active-runs and deleted; folding again changes nothing; what an old replica adds later is folded too', async () => {
    const prefix = prefixFor('legacy-active');
    const legacy = `${prefix}:runs:active`;
    const store = new RedisRunStore(redis, prefix);
    // Only the old set: nothing under the new key yet.
    await redis.sadd(legacy, 'old-run-0001', 'old-run-0002');
    expect(await sorted(store.activeRunIds())).toEqual(['old-run-0001', 'old-run-0002']);
    expect(await redis.exists(legacy)).toBe(0);

    const run = await stored(store, 'p');
    // An old replica, still running, adds a run it created and one already folded in.
    await redis.sadd(legacy, 'old-run-0003', 'old-run-0001');
    const all = ['old-run-0001', 'old-run-0002', 'old-run-0003', run.id].sort();
    expect(await sorted(store.activeRunIds())).toEqual(all);
    expect(await redis.exists(legacy)).toBe(0);
    expect(await sorted(redis.smembers(`${prefix}:active-runs`))).toEqual(all);

    // Again, with nothing to fold.
    expect(await sorted(store.activeRunIds())).toEqual(all);
    expect(await redis.exists(legacy)).toBe(0);
    expect(await sorted(redis.smembers(`${prefix}:active-runs`))).toEqual(all);
  });

  it('a sorted set there (a pipeline named active) is left alone, however often the active runs are read', async () => {
    const prefix = prefixFor('legacy-zset');
    const index = `${prefix}:runs:active`;
    const store = new RedisRunStore(redis, prefix);
    await redis.zadd(index, 1, 'zset-run-0001', 2, 'zset-run-0002');
    const run = await stored(store, 'p');
    for (let i = 0; i < 2; i++) expect(await store.activeRunIds()).toEqual([run.id]);
    expect(await redis.type(index)).toBe('zset');
    expect(await redis.zrange(index, 0, -1, 'WITHSCORES')).toEqual(['zset-run-0001', '1', 'zset-run-0002', '2']);
  });

  it('a run of the pipeline named active, stored while an old replica keeps its set there, folds the set in and is indexed', async () => {
    const prefix = prefixFor('legacy-create');
    const store = new RedisRunStore(redis, prefix);
    await redis.sadd(`${prefix}:runs:active`, 'old-replica-run-1');
    const run = await stored(store, 'active');
    expect(await redis.type(`${prefix}:runs:active`)).toBe('zset');
    expect((await store.listByPipeline('active', 10)).map((r) => r.id)).toEqual([run.id]);
    expect(await sorted(store.activeRunIds())).toEqual(['old-replica-run-1', run.id].sort());
  });

  it('a run ended by an old replica, or ended before it was folded in, leaves the active runs once the reconciler reads it', async () => {
    const prefix = prefixFor('legacy-ended');
    const store = new RedisRunStore(redis, prefix);
    const refuse = () => Promise.reject(new Error('no job should be sent or cancelled'));
    const jobs: JobDispatcher = { ensure: refuse, inspect: async () => ({ state: 'pending' }), cancel: refuse };
    const orchestrator = new Orchestrator({ runs: store, jobs, logger: createLogger('test', 'silent'), newId: randomUUID });

    const live = await stored(store, 'p');
    // An old replica ends a run this version created: it writes the run and takes it out of runs:active only.
    const endedByOld = await stored(store, 'p');
    const ended = step(endedByOld, { type: 'cancel', reason: 'test' }, new Date()).run;
    await redis.hset(`${prefix}:run:${endedByOld.id}`, 'version', 1, 'json', JSON.stringify({ ...ended, version: 1, plan: undefined }));
    await redis.srem(`${prefix}:runs:active`, endedByOld.id);
    // This version ends a run an old replica had listed in runs:active, before the set is folded in.
    const endedBeforeFold = await stored(store, 'p');
    await end(store, endedBeforeFold);
    await redis.sadd(`${prefix}:runs:active`, endedBeforeFold.id);

    expect(await sorted(store.activeRunIds())).toEqual([live.id, endedByOld.id, endedBeforeFold.id].sort());
    try {
      expect(await orchestrator.reconcile()).toEqual({ checked: 3, settled: 0 });
      expect(await store.activeRunIds()).toEqual([live.id]);
      expect(await orchestrator.reconcile()).toEqual({ checked: 1, settled: 0 });
      // Reading the live run leaves it listed.
      expect((await store.get(live.id))!.status).toBe(live.status);
      expect(await store.activeRunIds()).toEqual([live.id]);
    } finally {
      orchestrator.close();
    }
  });
});
