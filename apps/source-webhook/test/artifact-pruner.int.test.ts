import { randomUUID } from 'node:crypto';
import { mkdir, readFile, stat, symlink, utimes, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import { beforeAll, beforeEach, describe, expect, it, vi } from 'vitest';
import { artifactKey, FsArtifactStore } from '@conveyor/artifacts';
import { liveDeploymentKey, type RunStatus } from '@conveyor/contracts';
import type { Logger } from '@conveyor/service-kit';
import { RedisRetentionReader } from '../src/adapters/redis-retention-reader.js';
import { RedisRunStore } from '../src/adapters/redis-run-store.js';
import { ArtifactPruner } from '../src/artifact-pruner.js';
import { ORPHAN_GRACE_MS } from '../src/domain/artifact-retention.js';
import { loadEnv } from '../src/env.js';
import { retentionService, retentionSetup, storeRun, TOKEN } from './runs.testkit.js';

const HOUR = 3_600_000;

// Redis, a directory with files to pack, and prefixes cleaned up at the end (runs.testkit.ts).
const shared = retentionSetup('prune');
let url: string;
let redis: Redis;
let dir: string;
beforeAll(() => void ({ url, redis, dir } = shared));

/** One test's world: its own Redis prefix and artifact directory, the real run store, reader and file store. */
function world(keepRuns: number) {
  const prefix = shared.prefix('prune');
  const artifactDir = join(dir, prefix);
  const store = new FsArtifactStore(artifactDir);
  const runs = new RedisRunStore(redis, prefix);
  const logger = { info: vi.fn(), warn: vi.fn() };
  const pruner = new ArtifactPruner({ store, reader: new RedisRetentionReader(redis, prefix), logger: logger as unknown as Logger, policy: { keepRuns, orphanGraceMs: ORPHAN_GRACE_MS } });
  const runDir = (runId: string) => join(artifactDir, 'runs', runId);

  /** A real run record (as the orchestrator stores one) with real Source and Build tars, made `ageHours` ago. */
  async function runWithArtifacts(pipeline: string, status: RunStatus, ageHours = 48): Promise<string> {
    const runId = await storeRun(runs, pipeline, new Date(Date.now() - ageHours * HOUR), status);
    await artifactsFor(runId, ageHours);
    return runId;
  }

  /** Tars under `runs/<runId>/`, the directory last changed `ageHours` ago. */
  async function artifactsFor(runId: string, ageHours: number): Promise<void> {
    await store.putFiles(artifactKey(runId, 'Source', 1), join(dir, 'src'), ['a.txt']);
    await store.putFiles(artifactKey(runId, 'Build', 1), join(dir, 'src'), ['a.txt', 'b.txt']);
    const at = new Date(Date.now() - ageHours * HOUR);
    await utimes(runDir(runId), at, at);
  }

  const exists = (runId: string) => stat(runDir(runId)).then(() => true, () => false);
  const present = async (ids: string[]) => (await Promise.all(ids.map(exists))).map((there, i) => (there ? ids[i] : undefined)).filter(Boolean);
  return { prefix, artifactDir, store, runs, logger, pruner, runDir, runWithArtifacts, artifactsFor, exists, present };
}


beforeEach(() => vi.restoreAllMocks());

describe('artifact retention (ArtifactPruner over real Redis and real files)', () => {
  it("keeps each pipeline's newest N finished runs' artifacts, removes the older ones', and logs one line saying what it freed", async () => {
    const w = world(3);
    const shop: string[] = [];
    for (let i = 0; i < 6; i++) shop.push(await w.runWithArtifacts('shop', i % 3 === 0 ? 'FAILED' : 'SUCCEEDED', 60 - i));
    const web = [await w.runWithArtifacts('web', 'SUCCEEDED'), await w.runWithArtifacts('web', 'CANCELLED')];
    const bytesOf = async (ids: string[]) => {
      let total = 0;
      for (const id of ids) for (const name of ['Source-1.tar', 'Build-1.tar']) total += (await stat(join(w.runDir(id), name))).size;
      return total;
    };
    const freed = await bytesOf(shop.slice(0, 3));

    const result = await w.pruner.prune();
    expect(await w.present([...shop, ...web])).toEqual([...shop.slice(3), ...web]);
    expect(result).toEqual({ checked: 8, removed: 3, orphans: 0, bytes: freed });
    expect(w.logger.info).toHaveBeenCalledTimes(1);
    expect(w.logger.info).toHaveBeenCalledWith(expect.objectContaining({ removed: 3, bytes: freed }), 'pruned run artifacts');
    // The records stay: a run whose artifacts were pruned is still readable.
    expect((await w.runs.get(shop[0]!))?.status).toBe('FAILED');

    // A new run pushes the oldest kept one out; a pass with nothing to remove says nothing.
    shop.push(await w.runWithArtifacts('shop', 'SUCCEEDED', 1));
    expect((await w.pruner.prune()).removed).toBe(1);
    expect(await w.present(shop)).toEqual(shop.slice(4));
    expect((await w.pruner.prune()).removed).toBe(0);
    expect(w.logger.info).toHaveBeenCalledTimes(2);
  });

  it("keeps a run's artifacts while it is QUEUED or RUNNING, however old and however many runs came after, and prunes them once it ends", async () => {
    const w = world(1);
    const running = await w.runWithArtifacts('shop', 'RUNNING', 24 * 30);
    const queued = await w.runWithArtifacts('shop', 'QUEUED', 24 * 30);
    const done = [await w.runWithArtifacts('shop', 'SUCCEEDED', 2), await w.runWithArtifacts('shop', 'SUCCEEDED', 1)];
    await w.pruner.prune();
    expect(await w.present([running, queued, ...done])).toEqual([running, queued, done[1]]);

    const run = (await w.runs.get(running))!;
    expect(await w.runs.update([{ run: { ...run, status: 'SUCCEEDED', finishedAt: new Date().toISOString(), version: run.version + 1 }, expectedVersion: run.version, events: [] }])).toEqual([true]);
    await w.pruner.prune();
    expect(await w.present([running, queued, ...done])).toEqual([queued, done[1]]);
  });

  it("keeps the artifacts of the run whose version serves now (the deployer's live record), past the newest N, until another goes live", async () => {
    const w = world(2);
    const ids: string[] = [];
    for (let i = 0; i < 5; i++) ids.push(await w.runWithArtifacts('shop', 'SUCCEEDED', 50 - i));
    await redis.set(liveDeploymentKey(w.prefix, 'shop'), JSON.stringify({ runId: ids[1], attempt: 1, url: 'http://127.0.0.1:1' }));
    await w.pruner.prune();
    expect(await w.present(ids)).toEqual([ids[1], ids[3], ids[4]]);

    // Another version went live: the one it replaced is past the newest N, and goes.
    await redis.set(liveDeploymentKey(w.prefix, 'shop'), JSON.stringify({ runId: ids[4], attempt: 1, url: 'http://127.0.0.1:2' }));
    await w.pruner.prune();
    expect(await w.present(ids)).toEqual([ids[3], ids[4]]);
  });

  it('removes artifacts whose run has no record only once unchanged for the grace period, and keeps those whose record does not parse', async () => {
    const w = world(1);
    const [oldOrphan, youngOrphan, garbled] = [randomUUID(), randomUUID(), randomUUID()];
    await w.artifactsFor(oldOrphan, 2);
    await w.artifactsFor(youngOrphan, 0.5);
    await w.artifactsFor(garbled, 24 * 30);
    await redis.hset(`${w.prefix}:run:${garbled}`, 'version', '3', 'json', '{"not":"a run"}');
    const finished = [await w.runWithArtifacts('shop', 'SUCCEEDED'), await w.runWithArtifacts('shop', 'SUCCEEDED')];

    const result = await w.pruner.prune();
    expect(await w.present([oldOrphan, youngOrphan, garbled, ...finished])).toEqual([youngOrphan, garbled, finished[1]]);
    expect(result).toMatchObject({ removed: 2, orphans: 1 });
  });

  it('never follows an entry of runs/ that is not a run directory out of the store', async () => {
    const w = world(1);
    const outside = join(dir, `${w.prefix}-outside`);
    await mkdir(outside);
    await writeFile(join(outside, 'precious.txt'), 'keep me');
    const old = new Date(Date.now() - 48 * HOUR);
    await utimes(outside, old, old);
    const kept = await w.runWithArtifacts('shop', 'SUCCEEDED');
    const runs = join(w.artifactDir, 'runs');
    // Named as runs with no record and old: orphans, if they were taken for runs.
    const linkedId = randomUUID();
    await symlink(outside, join(runs, linkedId));
    await symlink('..', join(runs, randomUUID()));
    await mkdir(join(runs, 'Not.A.Run'));
    await utimes(join(runs, 'Not.A.Run'), old, old);

    const result = await w.pruner.prune();
    expect(result).toMatchObject({ checked: 1, removed: 0 });
    expect(await readFile(join(outside, 'precious.txt'), 'utf8')).toBe('keep me');
    expect(await readFile(join(runs, linkedId, 'precious.txt'), 'utf8')).toBe('keep me');
    expect((await stat(join(runs, 'Not.A.Run'))).isDirectory()).toBe(true);
    expect(await w.exists(kept)).toBe(true);
    expect(await readFile(join(dir, 'src', 'a.txt'), 'utf8')).toBe('A'.repeat(1000));
  });

  it('is safe with several replicas pruning at once: the same runs go, each once, and none of them fails', async () => {
    const w = world(2);
    const ids: string[] = [];
    for (let i = 0; i < 12; i++) ids.push(await w.runWithArtifacts('shop', 'SUCCEEDED', 50 - i));
    const replicas = [w.pruner, ...[1, 2, 3].map(() => new ArtifactPruner({ store: new FsArtifactStore(w.artifactDir), reader: new RedisRetentionReader(redis, w.prefix), logger: w.logger as unknown as Logger, policy: { keepRuns: 2, orphanGraceMs: ORPHAN_GRACE_MS } }))];
    const results = await Promise.all(replicas.map((p) => p.prune()));
    expect(await w.present(ids)).toEqual(ids.slice(10));
    expect(results.reduce((sum, r) => sum + r.removed, 0)).toBe(10);
    expect(w.logger.warn).not.toHaveBeenCalled();
  });
});

describe('artifact retention in the control plane', () => {
  it('reads ARTIFACT_RETENTION_RUNS (20 unless set; 0 keeps everything) and RETENTION_INTERVAL_MS', () => {
    const env = loadEnv({ CONVEYOR_API_TOKEN: TOKEN });
    expect([env.ARTIFACT_RETENTION_RUNS, env.RETENTION_INTERVAL_MS]).toEqual([20, 300_000]);
    expect(loadEnv({ CONVEYOR_API_TOKEN: TOKEN, ARTIFACT_RETENTION_RUNS: '0' }).ARTIFACT_RETENTION_RUNS).toBe(0);
    for (const bad of ['-1', '2.5', 'all']) expect(() => loadEnv({ CONVEYOR_API_TOKEN: TOKEN, ARTIFACT_RETENTION_RUNS: bad })).toThrow(/ARTIFACT_RETENTION_RUNS/);
    // Too short, or too long for a timer (one past 2^31 - 1 ms fires at once, again and again).
    for (const bad of ['10', '2147483648']) expect(() => loadEnv({ CONVEYOR_API_TOKEN: TOKEN, RETENTION_INTERVAL_MS: bad })).toThrow(/RETENTION_INTERVAL_MS/);
  });

  it('source-webhook prunes on its own, every RETENTION_INTERVAL_MS, and stops with its shutdown', async () => {
    const w = world(1);
    const ids = [await w.runWithArtifacts('shop', 'SUCCEEDED', 3), await w.runWithArtifacts('shop', 'SUCCEEDED', 2)];
    const service = retentionService(url, w.prefix, dir, { ARTIFACT_RETENTION_RUNS: '1' });
    try {
      await service.start();
      const deadline = Date.now() + 10_000;
      while ((await w.exists(ids[0]!)) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
      expect(await w.present(ids)).toEqual([ids[1]]);
      // And again on a later pass: a newer run pushes the second past the newest one.
      const newer = await w.runWithArtifacts('shop', 'SUCCEEDED', 1);
      ids.push(newer);
      while ((await w.exists(ids[1]!)) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
      expect(await w.present(ids)).toEqual([newer]);
    } finally {
      for (const step of service.shutdown) await step.run();
    }
    // Stopped: a run that has since fallen past the newest one is left, however long after.
    const later = await w.runWithArtifacts('shop', 'SUCCEEDED', 0);
    await new Promise((r) => setTimeout(r, 2500));
    expect(await w.present([...ids, later])).toEqual([ids[2], later]);
  });
});
