import { randomUUID } from 'node:crypto';
import { Queue, Worker, type ConnectionOptions } from 'bullmq';
import { Redis } from 'ioredis';
import { PipelineDefinition, QUEUES, stageResultOf, type StageJob } from '@conveyor/contracts';
import { createLogger, createQueue, createRedis, createStageWorker, waitReady, type StageOutcome } from '@conveyor/service-kit';
import { BullJobDispatcher, createRun, Orchestrator, pendingJobs, RedisRunStore, ResultsConsumer, step } from '@conveyor/source-webhook';

export interface HopBenchResult {
  runs: number;
  hops: number;
  seconds: number;
  hopsPerSecond: number;
  /** CPU seconds this process spent in the timed window (user + system, all its threads). */
  cpu: number;
  /** CPU seconds redis-server spent in the timed window (INFO cpu: user + system, all its threads). */
  redisCpu: number;
}

function cpuNow(): number {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1e6;
}

/**
 * Runs `work` (the measured part: `runs` runs of 5 transitions) and says how long it took and what CPU
 * this process and redis-server (read through `redis`) spent meanwhile.
 */
async function timed(redis: Redis, runs: number, work: () => Promise<void>): Promise<HopBenchResult> {
  const r0 = await redisCpuNow(redis);
  const t0 = performance.now();
  const c0 = cpuNow();
  await work();
  const seconds = (performance.now() - t0) / 1000;
  const cpu = cpuNow() - c0;
  const redisCpu = (await redisCpuNow(redis)) - r0;
  return { runs, hops: runs * 5, seconds, hopsPerSecond: (runs * 5) / seconds, cpu, redisCpu };
}

/** CPU seconds redis-server has used so far. */
async function redisCpuNow(redis: Redis): Promise<number> {
  const info = await redis.info('cpu');
  const field = (name: string) => Number(new RegExp(`^${name}:([0-9.]+)`, 'm').exec(info)?.[1] ?? NaN);
  return field('used_cpu_user') + field('used_cpu_sys');
}

const STAGE_TYPES = ['source', 'build', 'test', 'deploy', 'monitor'] as const;
/** Connections a measurement opens, closed together at its end (BullMQ leaves a passed-in connection open). */
class Connections {
  private readonly open: Redis[] = [];
  constructor(private readonly url: string) {}
  make(): Redis {
    const c = new Redis(this.url, { maxRetriesPerRequest: null });
    this.open.push(c);
    return c;
  }
  closeAll(): void {
    for (const c of this.open.splice(0)) c.disconnect();
  }
}

/** Baseline: the same 5 hops as a raw BullMQ chain — each worker adds the next job, nothing else. */
export async function rawChain(url: string, runs: number, concurrency: number): Promise<HopBenchResult> {
  const conns = new Connections(url);
  const prefix = `rawbench${randomUUID().slice(0, 8)}`;
  const redis = conns.make();
  const queues = STAGE_TYPES.map((t) => new Queue(t, { connection: redis as unknown as ConnectionOptions, prefix }));
  let done = 0;
  let resolveAll!: () => void;
  const all = new Promise<void>((r) => (resolveAll = r));
  const workers = STAGE_TYPES.map(
    (t, i) =>
      new Worker(
        t,
        async (job) => {
          const next = queues[i + 1];
          if (next) await next.add(STAGE_TYPES[i + 1]!, job.data, { jobId: `${job.data.run}.${i + 1}.1`, removeOnComplete: true });
          else if (++done === runs) resolveAll();
        },
        { connection: conns.make() as unknown as ConnectionOptions, prefix, concurrency },
      ),
  );
  await Promise.all(workers.map((w) => w.waitUntilReady()));
  const result = await timed(redis, runs, async () => {
    await queues[0]!.addBulk(Array.from({ length: runs }, (_, n) => ({ name: 'source', data: { run: `r${n}` }, opts: { jobId: `r${n}.0.1`, removeOnComplete: true } })));
    await all;
  });
  await Promise.all(workers.map((w) => w.close()));
  await Promise.all(queues.map((q) => q.obliterate({ force: true }).then(() => q.close())));
  conns.closeAll();
  return result;
}

/**
 * Second baseline: raw BullMQ moving the same messages Conveyor moves — each stage's job out to its
 * queue and its result back through a coordinator queue, whose worker enqueues the next stage. No
 * validation, no run record, no events: the bare plumbing of an orchestrated pipeline.
 */
export async function rawCoordinated(url: string, runs: number, concurrency: number): Promise<HopBenchResult> {
  const conns = new Connections(url);
  const prefix = `rawcoord${randomUUID().slice(0, 8)}`;
  const redis = conns.make();
  const queues = STAGE_TYPES.map((t) => new Queue(t, { connection: redis as unknown as ConnectionOptions, prefix }));
  const coord = new Queue('coord', { connection: redis as unknown as ConnectionOptions, prefix });
  let done = 0;
  let resolveAll!: () => void;
  const all = new Promise<void>((r) => (resolveAll = r));
  const workers = STAGE_TYPES.map(
    (t, i) =>
      new Worker(t, async (job) => void (await coord.add('result', { run: job.data.run, stage: i }, { jobId: `${job.data.run}.r${i}`, removeOnComplete: true })), {
        connection: conns.make() as unknown as ConnectionOptions,
        prefix,
        concurrency,
      }),
  );
  const coordinator = new Worker(
    'coord',
    async (job) => {
      const next = queues[job.data.stage + 1];
      if (next) await next.add(STAGE_TYPES[job.data.stage + 1]!, { run: job.data.run }, { jobId: `${job.data.run}.${job.data.stage + 1}.1`, removeOnComplete: true });
      else if (++done === runs) resolveAll();
    },
    { connection: conns.make() as unknown as ConnectionOptions, prefix, concurrency },
  );
  await Promise.all([...workers, coordinator].map((w) => w.waitUntilReady()));
  const result = await timed(redis, runs, async () => {
    await queues[0]!.addBulk(Array.from({ length: runs }, (_, n) => ({ name: 'source', data: { run: `r${n}` }, opts: { jobId: `r${n}.0.1`, removeOnComplete: true } })));
    await all;
  });
  await Promise.all([...workers, coordinator].map((w) => w.close()));
  await Promise.all([...queues, coord].map((q) => q.obliterate({ force: true }).then(() => q.close())));
  conns.closeAll();
  return result;
}

const BENCH_PIPELINE = PipelineDefinition.parse({
  name: 'bench',
  source: { provider: 'generic', repository: 'file:///dev/null' },
  stages: [
    { name: 'Build', type: 'build' },
    { name: 'Test', type: 'test' },
    { name: 'Deploy', type: 'deploy', target: { kind: 'local', command: 'true' } },
    { name: 'Monitor', type: 'monitor' },
  ],
});

const FAKE_ARTIFACT = { key: 'runs/bench/x.tar', sha256: '0'.repeat(64), bytes: 0 };
const noop = async (job: StageJob): Promise<StageOutcome> => {
  switch (job.type) {
    case 'source':
      return { status: 'SUCCEEDED', output: { commit: 'a'.repeat(40), artifact: FAKE_ARTIFACT } };
    case 'deploy':
      return { status: 'SUCCEEDED', output: { url: 'http://127.0.0.1:1' } };
    default:
      return { status: 'SUCCEEDED', output: {} };
  }
};

/** Conveyor: runs through the real orchestrator (run records by compare-and-set, outcomes read from the queues' event streams) with no-op stage workers. */
export async function orchestrated(url: string, runs: number, concurrency: number): Promise<HopBenchResult> {
  const conns = new Connections(url);
  const prefix = `cvbench${randomUUID().slice(0, 8)}`;
  const logger = createLogger('bench', 'silent');
  // The same connections source-webhook makes (service.ts).
  const producer = createRedis(url, 'producer');
  const queueConn = createRedis(url, 'worker', { enableAutoPipelining: true });
  const queues = new Map(Object.values(QUEUES).map((n) => [n, createQueue(n, { connection: queueConn, prefix })]));
  await waitReady(producer);
  const runsStore = new RedisRunStore(producer, prefix);
  const orchestrator = new Orchestrator({ runs: runsStore, jobs: new BullJobDispatcher(queues, { redis: queueConn, prefix }), logger, newId: randomUUID });
  const stageWorkers = STAGE_TYPES.map((type) =>
    createStageWorker({ type, queueName: QUEUES[type], connection: conns.make(), prefix, handler: noop as never, logger, concurrency, lockDuration: 30_000, stalledInterval: 30_000 }),
  );
  const results = new ResultsConsumer({ redis: conns.make(), prefix, orchestrator, logger });
  await results.start();
  await Promise.all(stageWorkers.map((w) => w.waitUntilReady()));
  const result = await timed(producer, runs, async () => {
    await Promise.all(Array.from({ length: runs }, () => orchestrator.startRun(BENCH_PIPELINE, { type: 'manual', ref: 'refs/heads/main' })));
    // SCARD, not SMEMBERS: watching must not load the system it measures.
    while ((await producer.scard(`${prefix}:active-runs`)) > 0) await new Promise((r) => setTimeout(r, 5));
  });
  const finished = await runsStore.listByPipeline('bench', runs);
  const succeeded = finished.filter((r) => r.status === 'SUCCEEDED').length;
  if (succeeded !== runs) throw new Error(`only ${succeeded}/${runs} bench runs succeeded`);
  await results.stop();
  await Promise.all(stageWorkers.map((w) => w.close()));
  await Promise.all([...queues.values()].map((q) => q.obliterate({ force: true }).then(() => q.close())));
  const keys = await producer.keys(`${prefix}:*`);
  if (keys.length) await producer.del(...keys);
  producer.disconnect();
  queueConn.disconnect();
  conns.closeAll();
  return result;
}

/** The five jobs of one bench run, as the state machine builds them: `jobFor(runId, i)` is stage i's for that run. */
async function templateJobs(): Promise<(runId: string, i: number) => StageJob> {
  let run = createRun({ id: 'template-run', number: 1, definition: BENCH_PIPELINE, trigger: { type: 'manual', ref: 'refs/heads/main' } }, new Date()).run;
  const template: StageJob[] = [];
  for (let i = 0; i < 5; i++) {
    const job = pendingJobs(run)[0]!;
    template.push(job);
    const at = new Date().toISOString();
    run = step(run, { type: 'stage-result', result: stageResultOf(job, { status: 'SUCCEEDED', startedAt: at, finishedAt: at, output: (await noop(job)).output ?? {} }) }, new Date()).run;
  }
  return (runId, i) => ({ ...template[i]!, runId, jobId: `${runId}.${template[i]!.stage}.1` });
}

/**
 * Third baseline (BENCH_FLOOR=1): the raw chain asked what Conveyor asks of BullMQ — its job payloads,
 * its job options (retries, retention of completed jobs) and event-stream length, and each worker
 * completing its job with a result of Conveyor's size — but still each worker adding the next job
 * itself: no validation, no orchestrator, no run record.
 */
export async function rawChainLikeForLike(url: string, runs: number, concurrency: number): Promise<HopBenchResult> {
  const conns = new Connections(url);
  const prefix = `rawlike${randomUUID().slice(0, 8)}`;
  const redis = conns.make();
  const queues = STAGE_TYPES.map((t) => createQueue(QUEUES[t], { connection: redis, prefix }));
  const jobFor = await templateJobs();
  let done = 0;
  let resolveAll!: () => void;
  const all = new Promise<void>((r) => (resolveAll = r));
  const workers = STAGE_TYPES.map(
    (type, i) =>
      new Worker(
        QUEUES[type],
        async (bull) => {
          const job = bull.data as StageJob;
          const next = queues[i + 1];
          if (next) {
            const nextJob = jobFor(job.runId, i + 1);
            await next.add(nextJob.type, nextJob, { jobId: nextJob.jobId });
          } else if (++done === runs) resolveAll();
          const at = new Date().toISOString();
          return stageResultOf(job, { status: 'SUCCEEDED', startedAt: at, finishedAt: at, output: (await noop(job)).output ?? {} });
        },
        { connection: conns.make() as unknown as ConnectionOptions, prefix, concurrency },
      ),
  );
  await Promise.all(workers.map((w) => w.waitUntilReady()));
  const result = await timed(redis, runs, async () => {
    await Promise.all(
      Array.from({ length: runs }, (_, n) => {
        const job = jobFor(`like-run-${n}`, 0);
        return queues[0]!.add(job.type, job, { jobId: job.jobId });
      }),
    );
    await all;
  });
  await Promise.all(workers.map((w) => w.close()));
  await Promise.all(queues.map((q) => q.obliterate({ force: true }).then(() => q.close())));
  conns.closeAll();
  return result;
}

/**
 * The floor of Conveyor's design, for reference (BENCH_FLOOR=1): Conveyor's own stage workers and job
 * payloads, and a reader of the queues' event streams that enqueues each next job, with no run record:
 * no compare-and-set, no validation of results, no run events. What Conveyor spends above this is the
 * price of its run state.
 */
export async function statelessReader(url: string, runs: number, concurrency: number): Promise<HopBenchResult> {
  const conns = new Connections(url);
  const prefix = `flbench${randomUUID().slice(0, 8)}`;
  const logger = createLogger('bench', 'silent');
  const queueConn = createRedis(url, 'worker', { enableAutoPipelining: true });
  const queues = STAGE_TYPES.map((t) => createQueue(QUEUES[t], { connection: queueConn, prefix }));
  const jobFor = await templateJobs();
  let done = 0;
  const stageWorkers = STAGE_TYPES.map((type) =>
    createStageWorker({ type, queueName: QUEUES[type], connection: conns.make(), prefix, handler: noop as never, logger, concurrency, lockDuration: 30_000, stalledInterval: 30_000 }),
  );
  await Promise.all(stageWorkers.map((w) => w.waitUntilReady()));
  const reader = conns.make();
  const keys = STAGE_TYPES.map((t) => `${prefix}:${QUEUES[t]}:events`);
  for (const k of keys) await reader.xgroup('CREATE', k, 'g', '0', 'MKSTREAM');
  const acker = conns.make();
  const result = await timed(acker, runs, async () => {
    await Promise.all(
      Array.from({ length: runs }, (_, n) => {
        const job = jobFor(`floor-run-${n}`, 0);
        return queues[0]!.add(job.type, job, { jobId: job.jobId });
      }),
    );
    while (done < runs) {
      const reply = (await reader.xreadgroup('GROUP', 'g', 'c', 'COUNT', 500, 'BLOCK', 1000, 'STREAMS', ...keys, ...keys.map(() => '>'))) as [string, [string, string[]][]][] | null;
      const adds: Promise<unknown>[] = [];
      const ack = acker.pipeline();
      for (const [key, entries] of reply ?? []) {
        const i = keys.indexOf(key);
        for (const [, fields] of entries) {
          // BullMQ writes: event completed jobId <id> returnvalue <json> prev active
          const field = (name: string) => fields[fields.indexOf(name) + 1];
          if (field('event') !== 'completed') continue;
          const jobId = field('jobId')!;
          if ((JSON.parse(field('returnvalue')!) as { status: string }).status !== 'SUCCEEDED') throw new Error(`${jobId} failed`);
          const next = queues[i + 1];
          if (!next) done++;
          else {
            const job = jobFor(jobId.slice(0, jobId.indexOf('.')), i + 1);
            adds.push(next.add(job.type, job, { jobId: job.jobId }));
          }
        }
        ack.xack(key, 'g', ...entries.map(([id]) => id));
      }
      await Promise.all([...adds, ack.exec()]);
    }
  });
  await Promise.all(stageWorkers.map((w) => w.close()));
  await Promise.all(queues.map((q) => q.obliterate({ force: true }).then(() => q.close())));
  for (const c of [queueConn, reader, acker]) c.disconnect();
  conns.closeAll();
  return result;
}
