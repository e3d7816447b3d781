import { randomUUID } from 'node:crypto';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, expect } from 'vitest';
import { PipelineDefinition, type RunStatus } from '@conveyor/contracts';
import { createLogger } from '@conveyor/service-kit';
import { testRedis, uniquePrefix } from '@conveyor/testing';
import type { RedisRunStore } from '../src/adapters/redis-run-store.js';
import { createRun } from '../src/domain/state-machine.js';
import { loadEnv } from '../src/env.js';
import { composeService } from '../src/service.js';

/** The API token the retention tests' services are given. */
export const TOKEN = 'test-token-0123456789abcdef';

const trigger = { type: 'manual' as const, ref: 'refs/heads/main' };

/** A one-stage pipeline of this name. */
export const definitionOf = (name: string) =>
  PipelineDefinition.parse({ name, source: { provider: 'generic', repository: 'file:///nowhere.git' }, stages: [{ name: 'Build', type: 'build' }] });

/** Stores a run as the orchestrator does (its next number), created at `createdAt` and in `status` (finished a minute later); its id. */
export async function storeRun(store: RedisRunStore, pipeline: string, createdAt: Date, status: RunStatus = 'SUCCEEDED'): Promise<string> {
  const { run, events } = createRun({ id: randomUUID(), number: await store.nextRunNumber(pipeline), definition: definitionOf(pipeline), trigger }, createdAt);
  const ended = status === 'QUEUED' || status === 'RUNNING' ? {} : { finishedAt: new Date(createdAt.getTime() + 60_000).toISOString() };
  expect(await store.create({ ...run, status, ...ended }, events)).toEqual({ created: true });
  return run.id;
}

/** A source-webhook of its own on `prefix`, its directories under `dir`, retention every second; `settings` on top. */
export function retentionService(url: string, prefix: string, dir: string, settings: Record<string, string>) {
  const env = loadEnv({
    REDIS_URL: url,
    QUEUE_PREFIX: prefix,
    CONVEYOR_API_TOKEN: TOKEN,
    ARTIFACT_DIR: join(dir, prefix),
    SOURCE_CACHE_DIR: join(dir, `${prefix}-cache`),
    RECONCILE_INTERVAL_MS: '3600000',
    RETENTION_INTERVAL_MS: '1000',
    LOG_LEVEL: 'silent',
    ...settings,
  });
  return composeService(env, createLogger('test', 'silent'));
}

/**
 * What a retention test file shares, made before its tests and removed after them: Redis, a temp
 * directory holding `src/a.txt` (1000 bytes) and `src/b.txt` (5000 bytes) to pack as artifacts, and
 * Redis prefixes (`prefix(tag)`) whose keys are deleted at the end.
 */
export function retentionSetup(tag: string) {
  const prefixes: string[] = [];
  const ctx = {
    url: '',
    redis: undefined as unknown as Redis,
    dir: '',
    prefix(name: string): string {
      const prefix = uniquePrefix(name);
      prefixes.push(prefix);
      return prefix;
    },
  };
  beforeAll(async () => {
    ctx.url = (await testRedis()).url;
    ctx.redis = new Redis(ctx.url);
    ctx.dir = await mkdtemp(join(tmpdir(), `cv-${tag}-`));
    await mkdir(join(ctx.dir, 'src'));
    await writeFile(join(ctx.dir, 'src', 'a.txt'), 'A'.repeat(1000));
    await writeFile(join(ctx.dir, 'src', 'b.txt'), 'B'.repeat(5000));
  });
  afterAll(async () => {
    for (const prefix of prefixes) {
      const keys = await ctx.redis.keys(`${prefix}:*`);
      if (keys.length > 0) await ctx.redis.del(...keys);
    }
    ctx.redis.disconnect();
    await rm(ctx.dir, { recursive: true, force: true });
    await (await testRedis()).stop();
  });
  return ctx;
}
