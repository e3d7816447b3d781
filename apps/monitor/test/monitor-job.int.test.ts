import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Queue } from 'bullmq';
import { Redis } from 'ioredis';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { liveDeploymentKey, MonitorJob, QUEUES, StageResult, stageJobId, type VerifySettings } from '@conveyor/contracts';
import { createQueue, stageLogKey } from '@conveyor/service-kit';
import { completedResults, freePort, testRedis, uniquePrefix } from '@conveyor/testing';
import { startService, type RunningService } from './service.js';

let redisUrl: string;
let stopRedis: () => Promise<void>;
let redis: Redis;
let prefix: string;
let service: RunningService;
let monitorQueue: Queue;
let app: Server;
let appUrl: string;
/** What the probed app answers: the status for the n-th request (1-based). */
let answer: (n: number) => number = () => 200;
let requests = 0;
let runCounter = 0;

beforeAll(async () => {
  ({ url: redisUrl, stop: stopRedis } = await testRedis());
  redis = new Redis(redisUrl, { maxRetriesPerRequest: null });
  app = createServer((req, res) => {
    requests += 1;
    res.writeHead(req.url === '/healthz' ? answer(requests) : 404);
    res.end('ok');
  });
  await new Promise<void>((r) => app.listen(0, '127.0.0.1', r));
  appUrl = `http://127.0.0.1:${(app.address() as AddressInfo).port}`;
});
afterAll(async () => {
  await new Promise((r) => app.close(r));
  await redis.quit();
  await stopRedis();
});

beforeEach(async () => {
  prefix = uniquePrefix('mon');
  requests = 0;
  answer = () => 200;
  service = await startService({ REDIS_URL: redisUrl, QUEUE_PREFIX: prefix });
  monitorQueue = createQueue(QUEUES.monitor, { connection: redis, prefix });
});
afterEach(async () => {
  await service.stop();
  await monitorQueue.obliterate({ force: true });
  await monitorQueue.close();
  const keys = await redis.keys(`${prefix}:*`);
  if (keys.length) await redis.del(...keys);
});

function makeJob(url: string, verify: Partial<VerifySettings>): MonitorJob {
  runCounter += 1;
  const runId = `run-${prefix.toLowerCase()}-${runCounter}`;
  return MonitorJob.parse({
    v: 1,
    type: 'monitor',
    jobId: stageJobId(runId, 'Verify', 1),
    runId,
    runNumber: runCounter,
    pipeline: 'shop',
    stage: 'Verify',
    stageIndex: 3,
    attempt: 1,
    trigger: { type: 'manual', ref: 'refs/heads/main' },
    url,
    verify: { healthPath: '/healthz', timeoutMs: 1000, ...verify },
  });
}

async function runMonitor(job: MonitorJob, ms = 60_000): Promise<StageResult> {
  await monitorQueue.add('monitor', job, { jobId: job.jobId });
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    const result = (await completedResults(redis, prefix, QUEUES.monitor)).find((r) => r.jobId === job.jobId);
    if (result) return result;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`no StageResult for ${job.jobId}; service output:\n${service.output()}`);
}

describe('monitor stage', () => {
  it('succeeds with probe statistics when the deployed service answers 200', async () => {
    const job = makeJob(appUrl, { durationSeconds: 2, intervalSeconds: 0.5 });
    const result = await runMonitor(job);
    expect(result.status, result.message).toBe('SUCCEEDED');
    // 5 slots in 2 s, its end included (0, 0.5, … 2 s); a probe slower than the interval (a loaded CI machine) skips a slot.
    expect(result.output.probes).toMatchObject({ failed: 0 });
    expect(result.output.probes!.total).toBeGreaterThanOrEqual(4);
    expect(result.output.probes!.total).toBeLessThanOrEqual(5);
    expect(result.output.probes!.p95Ms).toBeGreaterThanOrEqual(result.output.probes!.p50Ms);
    expect(requests).toBe(result.output.probes!.total);
    const log = await redis.get(stageLogKey(prefix, job.jobId));
    expect(log).toContain(`probing ${appUrl}/healthz every 0.5s for 2s`);
    expect(log).toContain(`probe ${result.output.probes!.total}: ok HTTP 200`);
  });

  it('fails, and stops early, once more probes fail than allowed', async () => {
    answer = (n) => (n <= 2 ? 200 : 500);
    const started = Date.now();
    const result = await runMonitor(makeJob(appUrl, { durationSeconds: 60, intervalSeconds: 0.3, maxFailures: 1 }));
    expect(result.status).toBe('FAILED');
    expect(result.output.probes).toMatchObject({ total: 4, failed: 2 });
    expect(result.message).toContain('2 of 4 probes');
    expect(result.message).toContain('HTTP 500');
    expect(Date.now() - started).toBeLessThan(20_000);
  });

  it('counts an unreachable service as failed probes', async () => {
    const nobody = `http://127.0.0.1:${await freePort()}`;
    const result = await runMonitor(makeJob(nobody, { durationSeconds: 1, intervalSeconds: 0.5 }));
    expect(result.status).toBe('FAILED');
    expect(result.message).toContain('ECONNREFUSED');
  });

  it("ends, passing, when its version stops because another run's deploy replaced it; fails when it stops still serving", async () => {
    answer = (n) => (n <= 2 ? 200 : 503);
    const job = makeJob(appUrl, { durationSeconds: 60, intervalSeconds: 0.3 });
    // What the deployer records before stopping the version it replaces.
    await redis.set(liveDeploymentKey(prefix, 'shop'), JSON.stringify({ runId: 'run-newer-1', attempt: 1, url: 'http://127.0.0.1:1' }));
    const replaced = await runMonitor(job);
    expect(replaced.status, replaced.message).toBe('SUCCEEDED');
    expect(replaced.output).toMatchObject({ probes: { total: 2, failed: 0 }, supersededBy: { runId: 'run-newer-1', url: 'http://127.0.0.1:1' } });
    expect(replaced.message).toContain('run run-newer-1 replaced this version');
    expect(await redis.get(stageLogKey(prefix, job.jobId))).toContain('probe 3: FAILED HTTP 503');

    // The record names the version probed: its failures are its own.
    requests = 0;
    const own = makeJob(appUrl, { durationSeconds: 60, intervalSeconds: 0.3 });
    await redis.set(liveDeploymentKey(prefix, 'shop'), JSON.stringify({ runId: own.runId, attempt: 1, url: appUrl }));
    const failed = await runMonitor(own);
    expect(failed.status).toBe('FAILED');
    expect(failed.output.supersededBy).toBeUndefined();
  });

  it('refuses to probe anything that is not http(s): the job is rejected before any probe', async () => {
    const job = { ...makeJob('http://127.0.0.1:1', { durationSeconds: 1 }), url: 'file:///etc/passwd' };
    await monitorQueue.add('monitor', job, { jobId: job.jobId });
    const deadline = Date.now() + 30_000;
    let state = '';
    while (Date.now() < deadline && state !== 'failed') {
      state = (await (await monitorQueue.getJob(job.jobId))?.getState()) ?? '';
      await new Promise((r) => setTimeout(r, 100));
    }
    expect(state).toBe('failed');
    expect((await monitorQueue.getJob(job.jobId))?.failedReason).toContain('malformed monitor job');
  });
});
