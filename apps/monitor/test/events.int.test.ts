import type { Queue } from 'bullmq';
import { Redis } from 'ioredis';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { EVENTS_STREAM, QUEUES, type RunEvent } from '@conveyor/contracts';
import { createQueue } from '@conveyor/service-kit';
import { testRedis, uniquePrefix } from '@conveyor/testing';
import { startService, type RunningService } from './service.js';

const TOKEN = 'integration-test-token-0123456789';
let redisUrl: string;
let stopRedis: () => Promise<void>;
let redis: Redis;
let prefix: string;
let stream: string;
let services: RunningService[] = [];

beforeAll(async () => {
  ({ url: redisUrl, stop: stopRedis } = await testRedis());
  redis = new Redis(redisUrl, { maxRetriesPerRequest: null });
});
afterAll(async () => {
  await redis.quit();
  await stopRedis();
});
beforeEach(() => {
  prefix = uniquePrefix('ev');
  stream = `${prefix}:${EVENTS_STREAM}`;
});
afterEach(async () => {
  await Promise.all(services.splice(0).map((s) => s.stop()));
  const keys = await redis.keys(`${prefix}:*`);
  if (keys.length) await redis.del(...keys);
});

async function start(extra: Record<string, string> = {}): Promise<RunningService> {
  const service = await startService({ REDIS_URL: redisUrl, QUEUE_PREFIX: prefix, CONVEYOR_API_TOKEN: TOKEN, ...extra });
  services.push(service);
  return service;
}

// Recent: the history keeps runs that finished within MONITOR_HISTORY_DAYS.
const EPOCH = Date.now() - 3_600_000;
const at = (s: number) => new Date(EPOCH + s * 1000).toISOString();
const finished = (runId: string, status: 'SUCCEEDED' | 'FAILED', s: number, pipeline = 'shop'): RunEvent => ({
  v: 1, type: 'run.finished', at: at(s), runId, pipeline, status, durationMs: 1000 * s,
});
const stageFinished = (runId: string, durationMs: number): RunEvent => ({
  v: 1, type: 'stage.finished', at: at(1), runId, pipeline: 'shop', stage: 'Build', stageType: 'build', attempt: 1, status: 'SUCCEEDED', durationMs,
});

async function emit(...events: (RunEvent | Record<string, unknown>)[]): Promise<void> {
  for (const e of events) await redis.xadd(stream, '*', 'event', JSON.stringify(e));
}

/** The value of a sample whose name and labels match (labels in any order), or undefined. */
function sample(text: string, name: string, labels: Record<string, string>): number | undefined {
  for (const line of text.split('\n')) {
    const m = /^([a-zA-Z_:][\w:]*)\{([^}]*)\} (\S+)$/.exec(line);
    if (!m || m[1] !== name) continue;
    const have = Object.fromEntries([...m[2]!.matchAll(/(\w+)="([^"]*)"/g)].map((x) => [x[1], x[2]]));
    if (Object.entries(labels).every(([k, v]) => have[k] === v)) return Number(m[3]);
  }
  return undefined;
}

async function eventually<T>(fn: () => Promise<T>, ok: (v: T) => boolean, what: string, ms = 15_000): Promise<T> {
  const deadline = Date.now() + ms;
  let last: T = await fn();
  while (!ok(last)) {
    if (Date.now() > deadline) throw new Error(`${what}: last value ${JSON.stringify(last)}`);
    await new Promise((r) => setTimeout(r, 100));
    last = await fn();
  }
  return last;
}

const metrics = (s: RunningService) => fetch(`${s.url}/metrics`).then((r) => r.text());
const history = (s: RunningService, query = '') =>
  fetch(`${s.url}/api/v1/history${query}`, { headers: { authorization: `Bearer ${TOKEN}` } }).then((r) => r.json() as Promise<{ runs: any[] }>);

describe('monitor run events', () => {
  it('turns events into metrics and history, skipping malformed entries', async () => {
    const service = await start();
    await emit(
      { not: 'an event' },
      finished('run-00000001', 'SUCCEEDED', 1),
      stageFinished('run-00000002', 42_000),
      finished('run-00000002', 'FAILED', 2),
      finished('run-00000003', 'SUCCEEDED', 3, 'blog'),
    );
    await redis.xadd(stream, '*', 'event', '{not json');
    await redis.xadd(stream, '*', 'other', 'field');
    await emit(finished('run-00000004', 'SUCCEEDED', 4));

    const text = await eventually(() => metrics(service), (t) => sample(t, 'conveyor_runs_total', { pipeline: 'shop', status: 'SUCCEEDED' }) === 2, 'runs counter');
    expect(sample(text, 'conveyor_runs_total', { pipeline: 'shop', status: 'FAILED' })).toBe(1);
    expect(sample(text, 'conveyor_runs_total', { pipeline: 'blog', status: 'SUCCEEDED' })).toBe(1);
    const stage = { pipeline: 'shop', stage: 'Build', type: 'build', status: 'SUCCEEDED' };
    expect(sample(text, 'conveyor_stage_duration_seconds_count', stage)).toBe(1);
    expect(sample(text, 'conveyor_stage_duration_seconds_sum', stage)).toBe(42);
    expect(sample(text, 'conveyor_stage_duration_seconds_bucket', { ...stage, le: '30' })).toBe(0);
    expect(sample(text, 'conveyor_stage_duration_seconds_bucket', { ...stage, le: '60' })).toBe(1);

    expect((await history(service, '?pipeline=shop')).runs.map((r) => [r.runId, r.status])).toEqual([
      ['run-00000004', 'SUCCEEDED'],
      ['run-00000002', 'FAILED'],
      ['run-00000001', 'SUCCEEDED'],
    ]);
    expect((await history(service, '?limit=2')).runs.map((r) => r.runId)).toEqual(['run-00000004', 'run-00000003']);
    expect((await fetch(`${service.url}/api/v1/history`)).status).toBe(401);

    // Every entry, good or bad, is acknowledged; the consumer is still running.
    await eventually(async () => ((await redis.xpending(stream, 'monitor')) as [number])[0], (n) => n === 0, 'pending entries');
    expect((await fetch(`${service.url}/readyz`)).status).toBe(200);
  });

  it('keeps history across a restart, stores a re-delivered event once, and restarts counters from zero', async () => {
    let service = await start();
    await emit(finished('run-00000001', 'SUCCEEDED', 1));
    await eventually(() => history(service), (h) => h.runs.length === 1, 'history');
    expect(await service.stop()).toBe(0);

    await emit(finished('run-00000001', 'SUCCEEDED', 1), finished('run-00000002', 'FAILED', 2));
    service = await start();
    const h = await eventually(() => history(service), (x) => x.runs.length === 2, 'history after restart');
    expect(h.runs.map((r) => r.runId)).toEqual(['run-00000002', 'run-00000001']);
    const text = await metrics(service);
    expect(sample(text, 'conveyor_runs_total', { pipeline: 'shop', status: 'FAILED' })).toBe(1);
    expect(sample(text, 'conveyor_runs_total', { pipeline: 'shop', status: 'SUCCEEDED' })).toBe(1);
  });

  it('takes over entries a dead consumer left pending', async () => {
    await redis.xgroup('CREATE', stream, 'monitor', '0', 'MKSTREAM');
    await emit(finished('run-00000009', 'FAILED', 9));
    // A consumer reads the entry and dies before acknowledging it.
    await redis.xreadgroup('GROUP', 'monitor', 'dead-consumer', 'COUNT', 10, 'STREAMS', stream, '>');
    expect(((await redis.xpending(stream, 'monitor')) as [number])[0]).toBe(1);

    const service = await start({ EVENTS_CLAIM_IDLE_MS: '1000' });
    const h = await eventually(() => history(service), (x) => x.runs.length === 1, 'claimed entry in history');
    expect(h.runs[0]).toMatchObject({ runId: 'run-00000009', status: 'FAILED' });
    await eventually(async () => ((await redis.xpending(stream, 'monitor')) as [number])[0], (n) => n === 0, 'pending entries');
  });

  it('counts the events trimmed from the stream while it was down (conveyor_events_lost_total), and reads on', async () => {
    let service = await start(); // its group, at the stream's start
    expect(sample(await metrics(service), 'conveyor_events_lost_total', { service: 'monitor' })).toBe(0);
    expect(await service.stop()).toBe(0);

    // While it is down, the orchestrator writes more than the stream keeps (it trims to about 10,000).
    const started: RunEvent = { v: 1, type: 'stage.started', at: at(1), runId: 'run-00000001', pipeline: 'shop', stage: 'Build', stageType: 'build', attempt: 1 };
    const pipeline = redis.pipeline();
    for (let i = 0; i < 10_500; i++) pipeline.xadd(stream, 'MAXLEN', '~', 10_000, '*', 'event', JSON.stringify(started));
    pipeline.xadd(stream, 'MAXLEN', '~', 10_000, '*', 'event', JSON.stringify(finished('run-00000002', 'SUCCEEDED', 2)));
    await pipeline.exec();
    const info = (await redis.xinfo('STREAM', stream)) as unknown[];
    const trimmed = (info[info.indexOf('entries-added') + 1] as number) - (await redis.xlen(stream));
    expect(trimmed).toBeGreaterThan(0);

    service = await start();
    const text = await eventually(() => metrics(service), (t) => sample(t, 'conveyor_runs_total', { pipeline: 'shop', status: 'SUCCEEDED' }) === 1, 'the run after the gap');
    expect(sample(text, 'conveyor_events_lost_total', { service: 'monitor' })).toBe(trimmed);
    expect(service.output()).toContain('trimmed from the stream before this group read them');
  });

  it('reports queue depth per queue and state at scrape time', async () => {
    const service = await start();
    const build: Queue = createQueue(QUEUES.build, { connection: redis, prefix });
    try {
      await build.add('build', { x: 1 });
      await build.add('build', { x: 2 });
      await build.add('build', { x: 3 }, { delay: 60_000 });
      const text = await metrics(service);
      expect(sample(text, 'conveyor_queue_depth', { queue: 'build', state: 'waiting' })).toBe(2);
      expect(sample(text, 'conveyor_queue_depth', { queue: 'build', state: 'delayed' })).toBe(1);
      expect(sample(text, 'conveyor_queue_depth', { queue: 'deploy', state: 'active' })).toBe(0);
      for (const queue of Object.values(QUEUES)) {
        for (const state of ['waiting', 'active', 'delayed', 'failed']) {
          expect(sample(text, 'conveyor_queue_depth', { queue, state }), `${queue}/${state}`).toBeTypeOf('number');
        }
      }
    } finally {
      await build.obliterate({ force: true });
      await build.close();
    }
  });
});
