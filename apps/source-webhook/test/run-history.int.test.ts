import { stat } from 'node:fs/promises';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import { beforeAll, describe, expect, it, vi } from 'vitest';
import { artifactKey, FsArtifactStore } from '@conveyor/artifacts';
import { liveDeploymentKey, type RunStatus } from '@conveyor/contracts';
import type { Logger } from '@conveyor/service-kit';
import { RedisRetentionReader } from '../src/adapters/redis-retention-reader.js';
import { RedisRunHistory } from '../src/adapters/redis-run-history.js';
import { activeRunsKey, RedisRunStore, runKey } from '../src/adapters/redis-run-store.js';
import { loadEnv } from '../src/env.js';
import { RunHistoryPruner } from '../src/run-history-pruner.js';
import { retentionService, retentionSetup, storeRun, TOKEN } from './runs.testkit.js';

const DAY = 86_400_000;
const NOW = Date.UTC(2026, 10, 1);

// Redis, a directory with files to pack, and prefixes cleaned up at the end (runs.testkit.ts).
const shared = retentionSetup('history');
let url: string;
let redis: Redis;
let dir: string;
beforeAll(() => void ({ url, redis, dir } = shared));


/** One test's world: its own prefix and artifact directory, the real run store, history and reader, a pruner keeping `keepDays`. */
function world(keepDays: number, maxReadPerPass?: number) {
  const prefix = shared.prefix('history');
  const store = new RedisRunStore(redis, prefix);
  const artifacts = new FsArtifactStore(join(dir, prefix));
  const logger = { info: vi.fn(), warn: vi.fn() };
  const pruner = () =>
    new RunHistoryPruner({
      runs: new RedisRunHistory(redis, prefix, store),
      reader: new RedisRetentionReader(redis, prefix),
      artifacts,
      logger: logger as unknown as Logger,
      keepDays,
      now: () => NOW,
      ...(maxReadPerPass ? { maxReadPerPass } : {}),
    });
  /** A run created `ageDays` before NOW, in `status`. */
  const run = (pipeline: string, ageDays: number, status: RunStatus = 'SUCCEEDED') => storeRun(store, pipeline, new Date(NOW - ageDays * DAY), status);
  const listed = async (pipeline: string) => (await store.listByPipeline(pipeline, 1000)).map((r) => r.id).sort();
  const hasArtifacts = (runId: string) => stat(join(dir, prefix, 'runs', runId)).then(() => true, () => false);
  return { prefix, store, artifacts, logger, pruner: pruner(), pruner2: pruner(), run, listed, hasArtifacts };
}

describe('run history retention (RunHistoryPruner over real Redis and real files)', () => {
  it('deletes finished runs created before the cutoff with their artifacts, record and index entry, and keeps the rest', async () => {
    const w = world(30);
    const old = [await w.run('shop', 400), await w.run('shop', 31, 'FAILED'), await w.run('shop', 45, 'CANCELLED')];
    const running = await w.run('shop', 200, 'RUNNING');
    const queued = await w.run('shop', 90, 'QUEUED');
    const recent = await w.run('shop', 29);
    const otherOld = await w.run('web', 60);
    // Ended runs listed as active, as an earlier version left them (a run ended as it is created is not listed).
    await redis.sadd(activeRunsKey(w.prefix), ...old, otherOld);
    for (const id of [old[0]!, running, recent]) await w.artifacts.putFiles(artifactKey(id, 'Source', 1), join(dir, 'src'), ['a.txt']);

    expect(await w.pruner.prune()).toEqual({ removed: 4, dangling: 0, read: 6 });
    expect(await w.listed('shop')).toEqual([running, queued, recent].sort());
    expect(await w.listed('web')).toEqual([]);
    for (const id of [...old, otherOld]) {
      expect(await w.store.get(id)).toBeUndefined();
      expect(await redis.exists(runKey(w.prefix, id))).toBe(0);
    }
    expect([await w.hasArtifacts(old[0]!), await w.hasArtifacts(running), await w.hasArtifacts(recent)]).toEqual([false, true, true]);
    // Deleted runs leave the active list as well.
    const active = await w.store.activeRunIds();
    expect(active).toEqual(expect.arrayContaining([running, queued]));
    for (const id of [...old, otherOld]) expect(active).not.toContain(id);
    expect(w.logger.info).toHaveBeenCalledWith({ runs: 4, dangling: 0, keepDays: 30 }, 'removed the records of old runs');
    // A pipeline whose last run went is no longer walked; nothing is left to do, and nothing is said.
    w.logger.info.mockClear();
    expect(await w.pruner.prune()).toEqual({ removed: 0, dangling: 0, read: 2 });
    expect(w.logger.info).not.toHaveBeenCalled();
  });

  it("keeps the run whose version serves now, and all of a pipeline's runs while its live record does not parse", async () => {
    const w = world(30);
    const live = await w.run('shop', 100);
    await w.run('shop', 200);
    const webRuns = [await w.run('web', 100), await w.run('web', 200)];
    await redis.set(liveDeploymentKey(w.prefix, 'shop'), JSON.stringify({ runId: live, attempt: 1, url: 'http://127.0.0.1:1' }));
    await redis.set(liveDeploymentKey(w.prefix, 'web'), '{"not":"a live record"}');

    expect((await w.pruner.prune()).removed).toBe(1);
    expect(await w.listed('shop')).toEqual([live]);
    expect(await w.listed('web')).toEqual([...webRuns].sort());
  });

  it('keeps a record that does not parse, drops index entries without a record, and pages past what it keeps', async () => {
    const w = world(30);
    // More than a page (500) of kept runs first (still running), one record garbled, one entry without a record.
    const kept: string[] = [];
    for (let i = 0; i < 510; i++) kept.push(await w.run('shop', 1000 - i / 10, 'RUNNING'));
    const garbled = await w.run('shop', 900);
    await redis.hset(runKey(w.prefix, garbled), 'json', '{"not":"a run"}');
    const dangling = await w.run('shop', 899);
    await redis.del(runKey(w.prefix, dangling));
    for (let i = 0; i < 60; i++) await w.run('shop', 800 - i / 10);

    expect(await w.pruner.prune()).toEqual({ removed: 60, dangling: 1, read: 572 });
    expect((await redis.zrange(`${w.prefix}:runs:shop`, 0, -1)).sort()).toEqual([...kept, garbled].sort());
    expect(await redis.hget(runKey(w.prefix, garbled), 'json')).toBe('{"not":"a run"}');
  });

  it('reads at most maxReadPerPass entries a pass; the next pass goes on', async () => {
    const w = world(30, 3);
    for (let i = 0; i < 5; i++) await w.run('shop', 100 + i);
    expect((await w.pruner.prune()).removed).toBe(3);
    expect((await w.pruner.prune()).removed).toBe(2);
    expect(await w.listed('shop')).toEqual([]);
  });

  it('two replicas at once delete each run once', async () => {
    const w = world(30);
    for (let i = 0; i < 40; i++) await w.run(i % 2 ? 'shop' : 'web', 100 + i);
    const [a, b] = await Promise.all([w.pruner.prune(), w.pruner2.prune()]);
    expect(a.removed + b.removed).toBe(40);
    expect([...(await w.listed('shop')), ...(await w.listed('web'))]).toEqual([]);
  });

  it("finds the pipelines of runs stored before it kept their list, but not an earlier version's active set at runs:active", async () => {
    const w = world(30);
    const old = await w.run('shop', 100);
    const named = await w.run('active', 100);
    // As an earlier version left things: no list of pipelines, a SET of active runs at runs:active … which
    // here is the pipeline named active's index, so the SET goes to another prefix's key to stand beside it.
    await redis.del(`${w.prefix}:run-pipelines`);
    const history = new RedisRunHistory(redis, w.prefix, w.store);
    expect((await history.pipelines()).sort()).toEqual(['active', 'shop']);
    const legacy = shared.prefix('history-legacy');
    await redis.sadd(`${legacy}:runs:active`, old);
    expect(await new RedisRunHistory(redis, legacy, w.store).pipelines()).toEqual([]);
    expect((await w.pruner.prune()).removed).toBe(2);
    expect([await w.store.get(old), await w.store.get(named)]).toEqual([undefined, undefined]);
  });

  it('reads RUN_HISTORY_DAYS (365 unless set; 0 keeps every run)', () => {
    expect(loadEnv({ CONVEYOR_API_TOKEN: TOKEN }).RUN_HISTORY_DAYS).toBe(365);
    expect(loadEnv({ CONVEYOR_API_TOKEN: TOKEN, RUN_HISTORY_DAYS: '0' }).RUN_HISTORY_DAYS).toBe(0);
    for (const bad of ['-1', '1.5', 'forever']) expect(() => loadEnv({ CONVEYOR_API_TOKEN: TOKEN, RUN_HISTORY_DAYS: bad })).toThrow(/RUN_HISTORY_DAYS/);
  });

  it('source-webhook deletes old runs on its own timer, with artifact retention off', async () => {
    const w = world(30);
    const now = Date.now();
    const old = await storeRunAt(w, now - 400 * DAY);
    // Two recent runs with artifacts: with ARTIFACT_RETENTION_RUNS=0, keeping none would not prune them.
    const recent = [await storeRunAt(w, now - 2 * DAY), await storeRunAt(w, now - DAY)];
    for (const id of recent) await w.artifacts.putFiles(artifactKey(id, 'Source', 1), join(dir, 'src'), ['a.txt']);
    const service = retentionService(url, w.prefix, dir, { ARTIFACT_RETENTION_RUNS: '0', RUN_HISTORY_DAYS: '365' });
    try {
      await service.start();
      const deadline = Date.now() + 10_000;
      while ((await w.store.get(old)) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
      expect(await w.listed('shop')).toEqual([...recent].sort());
      // A second pass has come and gone (the interval is a second) without touching the recent runs' artifacts.
      await new Promise((r) => setTimeout(r, 1500));
      expect([await w.hasArtifacts(recent[0]!), await w.hasArtifacts(recent[1]!)]).toEqual([true, true]);
    } finally {
      for (const step of service.shutdown) await step.run();
    }
  });
});

function storeRunAt(w: ReturnType<typeof world>, at: number): Promise<string> {
  return storeRun(w.store, 'shop', new Date(at));
}
