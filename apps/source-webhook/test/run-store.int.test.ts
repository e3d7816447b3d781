import { randomUUID } from 'node:crypto';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cancelledJobKey, cancelNoticesKey, EVENTS_STREAM, PipelineDefinition, QUEUES, stageResultOf, type Run, type StageJob } from '@conveyor/contracts';
import { createLogger, createQueue } from '@conveyor/service-kit';
import { recordCancelNotices, testRedis, uniquePrefix } from '@conveyor/testing';
import { BullJobDispatcher } from '../src/adapters/bull-job-dispatcher.js';
import { RedisRunStore } from '../src/adapters/redis-run-store.js';
import { createRun, pendingJobs, step } from '../src/domain/state-machine.js';
import { Orchestrator, type OrchestratorDeps } from '../src/orchestrator.js';
import type { JobDispatcher, RunStore } from '../src/ports.js';

let url: string;
let redis: Redis;
const logger = createLogger('test', 'silent');
const definition = PipelineDefinition.parse({
  name: 'store',
  source: { provider: 'generic', repository: 'file:///nowhere.git' },
  stages: [
    { name: 'Build', type: 'build' },
    { name: 'Test', type: 'test' },
  ],
});
const trigger = { type: 'manual' as const, ref: 'refs/heads/main' };
const SOURCE_OUTPUT = { commit: 'c'.repeat(40), artifact: { key: 'runs/x/Source-1.tar', sha256: '0'.repeat(64), bytes: 1 } };

const succeeded = (job: StageJob, output = {}) => {
  const at = new Date().toISOString();
  return { type: 'stage-result' as const, result: stageResultOf(job, { status: 'SUCCEEDED', startedAt: at, finishedAt: at, output }) };
};

/** A stored run (version 0) and the transition that moves its Source stage on, as an update. */
async function storedRun(store: RedisRunStore): Promise<Run> {
  const { run, events } = createRun({ id: randomUUID(), number: 1, definition, trigger }, new Date());
  expect(await store.create(run, events)).toEqual({ created: true });
  return run;
}

const worlds: (() => Promise<void>)[] = [];
/** A fresh prefix with its stage queues and run store; `make` gives an orchestrator over them, each with its own cache. */
function world(name: string) {
  const prefix = uniquePrefix(name);
  const conn = new Redis(url, { maxRetriesPerRequest: null });
  const queues = new Map(Object.values(QUEUES).map((q) => [q, createQueue(q, { connection: conn, prefix })]));
  const runs = new RedisRunStore(redis, prefix);
  const dispatcher = new BullJobDispatcher(queues, { redis: conn, prefix });
  const made: Orchestrator[] = [];
  const make = (store: RunStore = runs, extra: Partial<OrchestratorDeps> = {}) => {
    const orchestrator = new Orchestrator({ runs: store, jobs: dispatcher, logger, newId: randomUUID, ...extra });
    made.push(orchestrator);
    return orchestrator;
  };
  worlds.push(async () => {
    for (const o of made) o.close();
    await Promise.all([...queues.values()].map((q) => q.close()));
    conn.disconnect();
  });
  return { prefix, queues, runs, make, dispatcher };
}

beforeAll(async () => {
  url = (await testRedis()).url;
  redis = new Redis(url);
});
afterAll(async () => {
  for (const close of worlds) await close();
  redis.disconnect();
  await (await testRedis()).stop();
});

describe('RedisRunStore', () => {
  it('writes the plan once, at creation, and reads the run back whole', async () => {
    const { prefix, runs: store } = world('store');
    const run = await storedRun(store);
    const stored = await redis.hgetall(`${prefix}:run:${run.id}`);
    expect(JSON.parse(stored.plan!)).toEqual(run.plan);
    expect(JSON.parse(stored.json!)).not.toHaveProperty('plan');
    expect(await store.get(run.id)).toEqual(run);
    // A transition rewrites the run's state, not its plan.
    const tr = step(run, succeeded(pendingJobs(run)[0]!, SOURCE_OUTPUT), new Date());
    await redis.hset(`${prefix}:run:${run.id}`, 'plan', JSON.stringify({ ...run.plan, stages: [] }));
    expect(await store.update([{ run: { ...tr.run, version: 1 }, expectedVersion: 0, events: tr.events }])).toEqual([true]);
    expect(JSON.parse((await redis.hget(`${prefix}:run:${run.id}`, 'plan'))!).stages).toEqual([]);
  });

  it('refuses to create a run whose id exists', async () => {
    const store = new RedisRunStore(redis, uniquePrefix('store'));
    const run = await storedRun(store);
    expect(await store.create(run, [])).toEqual({ created: false });
  });

  it('stores a batch of transitions by compare-and-set: each run on its own, events only for those stored', async () => {
    const { prefix, runs: store } = world('store');
    const [a, b, c] = [await storedRun(store), await storedRun(store), await storedRun(store)];
    const eventsBefore = await redis.xlen(`${prefix}:${EVENTS_STREAM}`);
    const moved = (run: Run) => step(run, succeeded(pendingJobs(run)[0]!, SOURCE_OUTPUT), new Date());
    const [ta, tb, tc] = [moved(a), moved(b), moved(c)];
    // b was changed by another writer meanwhile: its version is no longer 0.
    await redis.hset(`${prefix}:run:${b.id}`, 'version', 1);
    const saved = await store.update([
      { run: { ...ta.run, version: 1 }, expectedVersion: 0, events: ta.events },
      { run: { ...tb.run, version: 1 }, expectedVersion: 0, events: tb.events },
      { run: { ...tc.run, version: 1 }, expectedVersion: 0, events: tc.events },
    ]);
    expect(saved).toEqual([true, false, true]);
    expect((await store.get(a.id))!.stages.map((s) => s.status)).toEqual(['SUCCEEDED', 'RUNNING', 'PENDING']);
    expect((await store.get(b.id))!.stages.map((s) => s.status)).toEqual(['RUNNING', 'PENDING', 'PENDING']);
    expect(await redis.xlen(`${prefix}:${EVENTS_STREAM}`)).toBe(eventsBefore + ta.events.length + tc.events.length);
    expect(await store.update([])).toEqual([]);
  });

  it('removes a finished run from the active set', async () => {
    const { runs: store } = world('store');
    const run = await storedRun(store);
    expect(await store.activeRunIds()).toEqual([run.id]);
    const ended = step(run, { type: 'cancel', reason: 'test' }, new Date());
    expect(await store.update([{ run: { ...ended.run, version: 1 }, expectedVersion: 0, events: ended.events }])).toEqual([true]);
    expect(await store.activeRunIds()).toEqual([]);
  });
});

describe('Orchestrator.cancelRun', () => {
  // A stress test of the compare-and-set under a real race; the late-enqueue case is forced in the next describe.
  it('racing a stage result on another orchestrator, ends every run CANCELLED with no unmarked job left waiting', async () => {
    const { prefix, queues, make, runs: store } = world('cancel');
    const [worker, api] = [make(), make(store, { cancelRepeatsMs: [200] })];
    const ids = await Promise.all(Array.from({ length: 20 }, async () => (await worker.startRun(definition, trigger)).runId!));
    const items = await Promise.all(ids.map(async (runId) => ({ runId, input: succeeded(pendingJobs((await store.get(runId))!)[0]!, SOURCE_OUTPUT) })));
    await queues.get(QUEUES.source)!.drain(); // the Source jobs were taken: these are their results
    // The Source results and the cancels land at the same moment, on two orchestrators.
    const [failed, outcomes] = await Promise.all([worker.handleInputs(items), Promise.all(ids.map((id) => api.cancelRun(id, 'race')))]);
    expect(failed).toEqual([]);
    expect(outcomes.map((o) => o.outcome)).toEqual(ids.map(() => 'cancelled'));
    for (const id of ids) {
      const run = (await store.get(id))!;
      expect(run.status).toBe('CANCELLED');
      expect(run.stages.filter((s) => s.status === 'RUNNING')).toEqual([]);
      expect(await store.activeRunIds()).not.toContain(id);
      // Whatever job of this run is still queued can never start: it carries its cancel mark.
      for (const queue of queues.values()) {
        for (const job of await queue.getJobs(['waiting', 'prioritized', 'delayed'])) {
          if (job.data.runId === id) expect(await redis.exists(cancelledJobKey(prefix, job.id!))).toBe(1);
        }
      }
    }
    // A job enqueued just after its run's cancel is dropped by the next sweep.
    const waiting = async () => {
      let n = 0;
      for (const queue of queues.values()) for (const job of await queue.getJobs(['waiting', 'prioritized', 'delayed'])) if (ids.includes(job.data.runId)) n++;
      return n;
    };
    await expect.poll(waiting, { timeout: 5000, interval: 100 }).toBe(0);
    // Results that arrive after the cancel change nothing.
    expect(await worker.handleInputs(items)).toEqual([]);
    for (const id of ids) expect((await store.get(id))!.status).toBe('CANCELLED');
  });
});

describe('Orchestrator.cancelRun, step by step', () => {
  it('a job enqueued just after its run was cancelled carries its mark, and the repeat drops it', async () => {
    const { prefix, queues, make, runs: store, dispatcher } = world('late');
    let release!: () => void;
    const held = new Promise<void>((r) => (release = r));
    let holding = false;
    // The orchestrator applying the Source result stores Build RUNNING, then stalls before enqueueing its job.
    const stalling: JobDispatcher = { ensure: async (jobs) => (holding && (await held), dispatcher.ensure(jobs)), inspect: (j) => dispatcher.inspect(j), cancel: (j) => dispatcher.cancel(j) };
    const worker = make(store, { jobs: stalling });
    const api = make(store, { cancelRepeatsMs: [300] });
    const { runId } = await worker.startRun(definition, trigger);
    await queues.get(QUEUES.source)!.drain();
    const source = pendingJobs((await store.get(runId!))!)[0]!;
    holding = true;
    const applying = worker.handleInputs([{ runId: runId!, input: succeeded(source, SOURCE_OUTPUT) }]);
    await expect.poll(async () => (await store.get(runId!))!.stages[1]!.status, { timeout: 5000, interval: 10 }).toBe('RUNNING');
    expect((await api.cancelRun(runId!, 'late')).outcome).toBe('cancelled');
    release();
    expect(await applying).toEqual([]);
    const build = queues.get(QUEUES.build)!;
    const jobId = `${runId}.Build.1`;
    expect(await build.getJob(jobId)).toBeDefined(); // enqueued after the first removal
    expect(await redis.exists(cancelledJobKey(prefix, jobId))).toBe(1);
    await expect.poll(async () => (await build.getJob(jobId)) === undefined, { timeout: 5000, interval: 50 }).toBe(true);
    expect((await store.get(runId!))!.stages.map((s) => s.status)).toEqual(['SUCCEEDED', 'CANCELLED', 'SKIPPED']);
  });

  it('a waiting cancel lets the running stage finish, stops nothing, and ends the run before the next stage', async () => {
    const { prefix, queues, make, runs: store } = world('wait');
    const api = make(store, { cancelRepeatsMs: [50] });
    const cancels = await recordCancelNotices(url, prefix);
    try {
      const { runId } = await api.startRun(definition, trigger);
      const sourceJob = pendingJobs((await store.get(runId!))!)[0]!;
      const asked = await api.cancelRun(runId!, 'freeze', 'wait');
      expect(asked).toMatchObject({ outcome: 'stopping', run: { status: 'RUNNING', stopRequested: { reason: 'freeze' } } });
      expect(await queues.get(QUEUES.source)!.getJob(sourceJob.jobId)).toBeDefined(); // the running stage goes on
      expect(await redis.exists(cancelledJobKey(prefix, sourceJob.jobId))).toBe(0);
      expect((await api.cancelRun(runId!, 'again', 'wait')).outcome).toBe('stopping');

      expect(await api.handleInputs([{ runId: runId!, input: succeeded(sourceJob, SOURCE_OUTPUT) }])).toEqual([]);
      const run = (await store.get(runId!))!;
      expect(run).toMatchObject({ status: 'CANCELLED', message: 'stopped after Source: freeze' });
      expect(run.stages.map((s) => s.status)).toEqual(['SUCCEEDED', 'SKIPPED', 'SKIPPED']);
      expect(await queues.get(QUEUES.build)!.getJobs(['waiting', 'prioritized', 'delayed'])).toEqual([]);
      // Asked again once it has ended: too late (409), though it still carries the first stop.
      expect(await api.cancelRun(runId!, 'later', 'wait')).toMatchObject({ outcome: 'ended', run: { status: 'CANCELLED' } });
      expect(await store.activeRunIds()).not.toContain(runId);
      await new Promise((r) => setTimeout(r, 200)); // past any repeat a cancel would have scheduled (50 ms)
      expect(await cancels.settled()).toEqual([]);
    } finally {
      cancels.close();
    }
  });

  it('a waiting cancel stored by one orchestrator is seen by another applying the stage result from its stale copy', async () => {
    const { make, runs: store } = world('wait-race');
    const [worker, api] = [make(), make(store, { cancelRepeatsMs: [] })];
    const { runId } = await worker.startRun(definition, trigger); // the worker caches the run it created
    const sourceJob = pendingJobs((await store.get(runId!))!)[0]!;
    expect((await api.cancelRun(runId!, 'freeze', 'wait')).outcome).toBe('stopping');
    expect(await worker.handleInputs([{ runId: runId!, input: succeeded(sourceJob, SOURCE_OUTPUT) }])).toEqual([]);
    const run = (await store.get(runId!))!;
    expect(run).toMatchObject({ status: 'CANCELLED', message: 'stopped after Source: freeze', version: 2 });
    expect(run.stages.map((s) => s.status)).toEqual(['SUCCEEDED', 'SKIPPED', 'SKIPPED']);
  });

  it('a waiting cancel asked while Source ran but stored after its result started Build cancels Build', async () => {
    const { prefix, make, runs: store } = world('wait-late');
    const worker = make();
    const { runId } = await worker.startRun(definition, trigger);
    const sourceJob = pendingJobs((await store.get(runId!))!)[0]!;
    // The API reads the run (Source RUNNING); the Source result is stored before its cancel is.
    let first = true;
    const racing: RunStore = Object.assign(Object.create(store) as RunStore, {
      get: async (id: string) => {
        const read = await store.get(id);
        if (first) {
          first = false;
          expect(await worker.handleInputs([{ runId: id, input: succeeded(sourceJob, SOURCE_OUTPUT) }])).toEqual([]);
        }
        return read;
      },
    });
    const api = make(racing, { cancelRepeatsMs: [] });
    const cancels = await recordCancelNotices(url, prefix);
    try {
      const asked = await api.cancelRun(runId!, 'freeze', 'wait');
      expect(asked).toMatchObject({ outcome: 'cancelled', run: { status: 'CANCELLED', message: 'stopped after Source: freeze' } });
      const run = (await store.get(runId!))!;
      expect(run.stages.map((s) => s.status)).toEqual(['SUCCEEDED', 'CANCELLED', 'SKIPPED']);
      const buildJobId = `${runId}.Build.1`;
      // The Build started meanwhile is told to stop: with the transition, then by the call.
      expect(await cancels.settled()).toEqual([buildJobId, buildJobId]);
      expect(await redis.exists(cancelledJobKey(prefix, buildJobId))).toBe(1);
    } finally {
      cancels.close();
    }
  });

  it("a cancel's marks and notices are stored with the run's transition: an orchestrator that dies just after leaves its work told", async () => {
    const { prefix, make, runs: store, dispatcher } = world('atomic');
    const cancels = await recordCancelNotices(url, prefix);
    try {
      // As if the process died right after storing the transition: the dispatcher's cancel never runs.
      const dying: JobDispatcher = { ensure: (j) => dispatcher.ensure(j), inspect: (j) => dispatcher.inspect(j), cancel: () => new Promise(() => undefined) };
      const api = make(store, { jobs: dying, cancelRepeatsMs: [] });
      const { runId } = await api.startRun(definition, trigger);
      const jobId = `${runId}.Source.1`;
      void api.cancelRun(runId!, 'crash right after');
      await expect.poll(async () => (await store.get(runId!))!.status, { timeout: 5000, interval: 20 }).toBe('CANCELLED');
      expect(await redis.exists(cancelledJobKey(prefix, jobId))).toBe(1);
      expect(await redis.zscore(cancelNoticesKey(prefix), jobId)).not.toBeNull();
      await expect.poll(() => cancels.settled(), { timeout: 5000, interval: 20 }).toEqual([jobId]);
    } finally {
      cancels.close();
    }
  });

  it('cancelling a cancelled run sends its notices again; one that ended otherwise is left as it is', async () => {
    const { prefix, make, runs: store } = world('again');
    const api = make(store, { cancelRepeatsMs: [] });
    const cancels = await recordCancelNotices(url, prefix);
    try {
      const { runId } = await api.startRun(definition, trigger);
      const jobId = `${runId}.Source.1`;
      expect((await api.cancelRun(runId!, 'once')).outcome).toBe('cancelled');
      expect(await cancels.settled()).toEqual([jobId, jobId]); // with the transition, then by the call
      const again = await api.cancelRun(runId!, 'twice');
      expect(again).toMatchObject({ outcome: 'cancelled', run: { status: 'CANCELLED', message: 'once' } });
      expect(await cancels.settled()).toEqual([jobId, jobId, jobId]);

      const other = (await api.startRun(definition, trigger)).runId!;
      const failed = pendingJobs((await store.get(other))!)[0]!;
      const at = new Date().toISOString();
      await api.handleInputs([{ runId: other, input: { type: 'stage-result', result: stageResultOf(failed, { status: 'FAILED', startedAt: at, finishedAt: at, message: 'no', output: {} }) } }]);
      expect(await api.cancelRun(other, 'too late')).toMatchObject({ outcome: 'ended', run: { status: 'FAILED' } });
      expect(await api.cancelRun('no-such-run', 'x')).toEqual({ outcome: 'not-found' });
      expect(await cancels.settled()).toEqual([jobId, jobId, jobId]);
    } finally {
      cancels.close();
    }
  });
});

describe('RedisRunStore.listByPipeline', () => {
  it('pages newest first with a cursor, every run once, runs created in the same millisecond included', async () => {
    const store = new RedisRunStore(redis, uniquePrefix('pages'));
    const at = (ms: number) => new Date(Date.UTC(2026, 10, 27, 12, 0, 0, ms));
    const made: Run[] = [];
    for (let i = 0; i < 10; i++) {
      // Seven in one millisecond, then three later ones.
      const { run, events } = createRun({ id: randomUUID(), number: i + 1, definition, trigger }, at(i < 7 ? 0 : i));
      expect(await store.create(run, events)).toEqual({ created: true });
      made.push(run);
    }
    const seen: string[] = [];
    let page = await store.listByPipeline('store', 3);
    for (let guard = 0; ; guard++) {
      expect(page.length).toBeLessThanOrEqual(3);
      seen.push(...page.map((r) => r.id));
      if (!page.next || guard > 10) break;
      page = await store.listByPipeline('store', 3, page.next);
    }
    expect(page.next).toBeUndefined();
    expect(new Set(seen).size).toBe(10);
    expect(seen.slice(0, 3)).toEqual([made[9]!.id, made[8]!.id, made[7]!.id]);
    expect(new Set(seen.slice(3))).toEqual(new Set(made.slice(0, 7).map((r) => r.id)));
    expect((await store.listByPipeline('store', 10)).next).toBeUndefined();
    await expect(store.listByPipeline('store', 3, 'bm90IGEgY3Vyc29y')).rejects.toThrow(RangeError);
  });

  it('names a record that does not parse instead of failing the page, and serves the others', async () => {
    const prefix = uniquePrefix('pages');
    const store = new RedisRunStore(redis, prefix);
    const [a, b, c] = [await storedRun(store), await storedRun(store), await storedRun(store)];
    await redis.hset(`${prefix}:run:${b.id}`, 'json', '{"not":"a run"}');
    const page = await store.listByPipeline('store', 10);
    expect(page.map((r) => r.id).sort()).toEqual([a.id, c.id].sort());
    expect(page.unreadable).toEqual([b.id]);
  });
});

describe('Orchestrator.handleInputs', () => {
  it('two orchestrators with their own caches apply a stream of inputs to the same runs exactly once', async () => {
    const { prefix, make, runs: store } = world('race');
    const [one, two] = [make(), make()];
    const ids = await Promise.all(Array.from({ length: 10 }, async () => (await one.startRun(definition, trigger)).runId!));
    // Drive every run through its three stages; each outcome is delivered to both orchestrators at once,
    // so for every input one of them finds its cached run behind the store and must read it again.
    for (const output of [SOURCE_OUTPUT, { artifact: { ...SOURCE_OUTPUT.artifact, key: 'runs/x/Build-1.tar' } }, {}]) {
      const items = await Promise.all(ids.map(async (runId) => ({ runId, input: succeeded(pendingJobs((await store.get(runId))!)[0]!, output) })));
      const [failedOne, failedTwo] = await Promise.all([one.handleInputs(items), two.handleInputs(items)]);
      expect([...failedOne, ...failedTwo]).toEqual([]);
    }
    for (const id of ids) {
      const run = (await store.get(id))!;
      expect(run.status).toBe('SUCCEEDED');
      // Three transitions, each stored once: created at 0, then 1, 2, 3.
      expect(run.version).toBe(3);
    }
    // Events are stored with the transition that made them: each appears once per run.
    const events = (await redis.xrange(`${prefix}:${EVENTS_STREAM}`, '-', '+')).map(([, f]) => JSON.parse(f[1]!) as { type: string; runId: string });
    for (const id of ids) {
      const types = events.filter((e) => e.runId === id).map((e) => e.type);
      expect(types.sort()).toEqual(['run.created', 'run.finished', ...Array(3).fill('stage.finished'), ...Array(3).fill('stage.started')].sort());
    }
  });

  it('an orchestrator whose cached run is behind the store reads it again before calling an input stale', async () => {
    const { make, runs: store } = world('stale');
    const [one, two] = [make(), make()];
    const { runId } = await one.startRun(definition, trigger); // one caches the run with Source RUNNING
    const source = pendingJobs((await store.get(runId!))!)[0]!;
    expect(await two.handleInputs([{ runId: runId!, input: succeeded(source, SOURCE_OUTPUT) }])).toEqual([]);
    const build = pendingJobs((await store.get(runId!))!)[0]!;
    // To one's cached copy the Build job is not running: only the stored run shows it is.
    expect(await one.handleInputs([{ runId: runId!, input: succeeded(build, { artifact: { ...SOURCE_OUTPUT.artifact, key: 'runs/x/Build-1.tar' } }) }])).toEqual([]);
    expect((await store.get(runId!))!.stages.map((s) => s.status)).toEqual(['SUCCEEDED', 'SUCCEEDED', 'RUNNING']);
  });

  it('applies several inputs for one run, in order, as one stored transition', async () => {
    const { make, runs: store } = world('fold');
    const orchestrator = make();
    const { runId } = await orchestrator.startRun(definition, trigger);
    const source = pendingJobs((await store.get(runId!))!)[0]!;
    const failed = await orchestrator.handleInputs([
      { runId: runId!, input: succeeded(source, SOURCE_OUTPUT) },
      { runId: runId!, input: succeeded(source, SOURCE_OUTPUT) }, // a duplicate: no change
      { runId: runId!, input: { type: 'stage-lost', jobId: `${runId}.Build.1`, reason: 'stalled' } },
    ]);
    expect(failed).toEqual([]);
    const run = (await store.get(runId!))!;
    expect(run.version).toBe(1);
    expect(run.status).toBe('FAILED');
    expect(run.stages.map((s) => s.status)).toEqual(['SUCCEEDED', 'FAILED', 'SKIPPED']);
  });

  it('an input the state machine cannot take holds back only its own run', async () => {
    const { queues, runs, make } = world('poison');
    const orchestrator = make();
    const [a, b] = [(await orchestrator.startRun(definition, trigger)).runId!, (await orchestrator.startRun(definition, trigger)).runId!];
    const poison = { runId: a, input: { type: 'no-such-input' } as never };
    const good = { runId: b, input: succeeded(pendingJobs((await runs.get(b))!)[0]!, SOURCE_OUTPUT) };
    expect(await orchestrator.handleInputs([poison, good])).toEqual([poison]);
    expect((await runs.get(b))!.stages[1]!.status).toBe('RUNNING');
    // ...and the job of the run that moved on was sent.
    expect(await queues.get(QUEUES.build)!.getJob(`${b}.Build.1`)).toBeTruthy();
  });

  it('returns the inputs it could not store, and ignores those for unknown runs', async () => {
    const { runs, make } = world('down');
    const orchestrator = make();
    const { runId } = await orchestrator.startRun(definition, trigger);
    const source = pendingJobs((await runs.get(runId!))!)[0]!;
    const broken = Object.assign(Object.create(runs) as RedisRunStore, { update: async () => Promise.reject(new Error('redis went away')) });
    const failing = make(broken);
    const item = { runId: runId!, input: succeeded(source, SOURCE_OUTPUT) };
    const unknown = { runId: 'no-such-run-0000', input: succeeded({ ...source, runId: 'no-such-run-0000', jobId: 'no-such-run-0000.Source.1' }, SOURCE_OUTPUT) };
    expect(await failing.handleInputs([item, unknown])).toEqual([item]);
    expect((await runs.get(runId!))!.version).toBe(0);
  });
});

describe('runs stored by earlier versions', () => {
  it('a run whose JSON holds its plan and an outbox is read, moved on, and keeps its plan', async () => {
    const { prefix, queues, runs, make } = world('legacy');
    const { run } = createRun({ id: randomUUID(), number: 1, definition, trigger }, new Date());
    // As the store wrote it before: one JSON with the plan and the outbox, no plan field.
    await redis.hset(`${prefix}:run:${run.id}`, 'version', 0, 'json', JSON.stringify({ ...run, outbox: pendingJobs(run) }));
    await redis.sadd(`${prefix}:runs:active`, run.id);
    const orchestrator = make();
    expect(await orchestrator.reconcile()).toEqual({ checked: 1, settled: 0 }); // re-sends its Source job
    expect(await queues.get(QUEUES.source)!.getJob(`${run.id}.Source.1`)).toBeTruthy();
    expect(await orchestrator.handleInputs([{ runId: run.id, input: succeeded(pendingJobs(run)[0]!, SOURCE_OUTPUT) }])).toEqual([]);
    const moved = (await runs.get(run.id))!;
    expect(moved.stages.map((s) => s.status)).toEqual(['SUCCEEDED', 'RUNNING', 'PENDING']);
    expect(moved.plan).toEqual(run.plan);
    expect(JSON.parse((await redis.hget(`${prefix}:run:${run.id}`, 'json'))!)).not.toHaveProperty('outbox');
  });
});

describe('reconciler', () => {
  it('fails a RUNNING stage whose job cannot be rebuilt from the run', async () => {
    const { runs, make } = world('unbuildable');
    const orchestrator = make();
    const { runId } = await orchestrator.startRun(definition, trigger);
    const created = (await runs.get(runId!))!;
    const moved = step(created, succeeded(pendingJobs(created)[0]!, SOURCE_OUTPUT), new Date());
    // Build RUNNING, but the commit it needs is gone (as a later change to the job builder might do).
    const { commit: _commit, ...broken } = moved.run;
    expect(await runs.update([{ run: { ...broken, version: 1 }, expectedVersion: 0, events: [] }])).toEqual([true]);
    expect(await orchestrator.reconcile()).toEqual({ checked: 1, settled: 1 });
    const run = (await runs.get(runId!))!;
    expect(run.status).toBe('FAILED');
    expect(run.stages[1]).toMatchObject({ status: 'FAILED', message: 'its job cannot be rebuilt: the Source stage resolved no commit' });
  });
});
