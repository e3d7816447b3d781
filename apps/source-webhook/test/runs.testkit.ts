import { randomUUID } from 'node:crypto';
import { join } from 'node:path';
import { expect } from 'vitest';
import { PipelineDefinition, type RunStatus } from '@conveyor/contracts';
import { createLogger } from '@conveyor/service-kit';
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
