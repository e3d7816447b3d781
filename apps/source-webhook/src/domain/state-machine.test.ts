import { describe, expect, it } from 'vitest';
import { PipelineDefinition, Run, RunEvent, StageJob, stageResultOf, type StageResult } from '@conveyor/contracts';
import { createRun, pendingJobs, step } from './state-machine.js';

const SHA = 'a'.repeat(40);
const ART = { key: 'runs/r/Source-1.tar', sha256: 'b'.repeat(64), bytes: 10 };
const BUILD_ART = { key: 'runs/r/Build-1.tar', sha256: 'c'.repeat(64), bytes: 20 };
const t = (s: number) => new Date(Date.UTC(2026, 0, 1, 0, 0, s));

const definition = PipelineDefinition.parse({
  name: 'hello',
  source: { provider: 'github', repository: 'file:///tmp/repo', branch: 'main', webhookSecret: 'x'.repeat(20) },
  stages: [
    { name: 'Build', type: 'build' },
    { name: 'Test', type: 'test', buildspec: 'buildspec-test.yml' },
    { name: 'Deploy', type: 'deploy', target: { kind: 'local', command: 'node server.js' } },
    { name: 'Monitor', type: 'monitor', verify: { durationSeconds: 2, intervalSeconds: 1 } },
  ],
});

function result(job: StageJob, status: 'SUCCEEDED' | 'FAILED', output: StageResult['output'] = {}, message?: string): StageResult {
  return stageResultOf(job, { status, startedAt: t(1).toISOString(), finishedAt: t(2).toISOString(), output, ...(message ? { message } : {}) });
}

function fresh(): Run {
  return createRun({ id: 'run-00000001', number: 7, definition, trigger: { type: 'manual', ref: 'refs/heads/main' } }, t(0)).run;
}

/** Drives the run through the given outcomes, returning every transition. */
function drive(outcomes: Array<['SUCCEEDED' | 'FAILED', StageResult['output']?]>) {
  let run = fresh();
  const events: RunEvent[] = [];
  outcomes.forEach(([status, output], n) => {
    const job = pendingJobs(run)[0]!;
    const tr = step(run, { type: 'stage-result', result: result(job, status, output) }, t(10 + n));
    run = tr.run;
    events.push(...tr.events);
  });
  return { run, events };
}

const ok = (output: StageResult['output'] = {}) => ['SUCCEEDED', output] as ['SUCCEEDED', StageResult['output']];

describe('createRun', () => {
  it('starts RUNNING with the Source stage running and its job pending', () => {
    const { run, events } = createRun({ id: 'run-00000001', number: 7, definition, trigger: { type: 'manual', ref: 'refs/heads/main' } }, t(0));
    expect(Run.parse(run)).toBeTruthy();
    expect(run.status).toBe('RUNNING');
    expect(run.stages.map((s) => [s.name, s.status])).toEqual([
      ['Source', 'RUNNING'],
      ['Build', 'PENDING'],
      ['Test', 'PENDING'],
      ['Deploy', 'PENDING'],
      ['Monitor', 'PENDING'],
    ]);
    expect(pendingJobs(run)).toEqual([expect.objectContaining({ type: 'source', jobId: 'run-00000001.Source.1', repository: 'file:///tmp/repo' })]);
    expect(events.map((e) => e.type)).toEqual(['run.created', 'stage.started']);
    expect(JSON.stringify(run)).not.toContain('x'.repeat(20));
  });
});

describe('step', () => {
  it('never changes the run it is given (the orchestrator keeps runs in memory between transitions)', () => {
    const freeze = <T>(value: T): T => {
      if (value && typeof value === 'object') {
        Object.values(value).forEach(freeze);
        Object.freeze(value);
      }
      return value;
    };
    let run = freeze(fresh());
    const outputs: StageResult['output'][] = [{ commit: SHA, artifact: ART }, { artifact: BUILD_ART }, { tests: { total: 1, passed: 1, failed: 0, skipped: 0 } }, { url: 'http://127.0.0.1:5000' }, {}];
    for (const [n, output] of outputs.entries()) {
      const before = JSON.stringify(run);
      const next = step(run, { type: 'stage-result', result: result(pendingJobs(run)[0]!, 'SUCCEEDED', output) }, t(10 + n)).run;
      expect(JSON.stringify(run)).toBe(before);
      run = freeze(next);
    }
    expect(run.status).toBe('SUCCEEDED');
  });

  it('walks every stage to SUCCEEDED, feeding each job from earlier outputs', () => {
    let run = fresh();
    const jobs: StageJob[] = [];
    const outputs: StageResult['output'][] = [{ commit: SHA, artifact: ART }, { artifact: BUILD_ART }, { tests: { total: 2, passed: 2, failed: 0, skipped: 0 } }, { url: 'http://127.0.0.1:5000' }, {}];
    for (const [n, output] of outputs.entries()) {
      const job = pendingJobs(run)[0]!;
      // The job is rebuilt from the stored run alone: the same after a round trip through JSON, and valid.
      expect(pendingJobs(Run.parse(JSON.parse(JSON.stringify(run))))).toEqual([job]);
      expect(StageJob.parse(job)).toEqual(job);
      jobs.push(job);
      run = step(run, { type: 'stage-result', result: result(job, 'SUCCEEDED', output) }, t(10 + n)).run;
    }
    expect(run.status).toBe('SUCCEEDED');
    expect(run.commit).toBe(SHA);
    expect(pendingJobs(run)).toEqual([]);
    expect(run.stages.every((s) => s.status === 'SUCCEEDED')).toBe(true);
    expect(jobs.map((j) => j.type)).toEqual(['source', 'build', 'test', 'deploy', 'monitor']);
    expect(jobs[1]).toMatchObject({ input: ART, commit: SHA, buildspec: 'buildspec.yml' });
    expect(jobs[2]).toMatchObject({ input: BUILD_ART, buildspec: 'buildspec-test.yml' });
    expect(jobs[3]).toMatchObject({ input: BUILD_ART, target: { kind: 'local', command: 'node server.js' } });
    expect(jobs[4]).toMatchObject({ url: 'http://127.0.0.1:5000' });
    expect(run.stages[2]!.result?.tests).toEqual({ total: 2, passed: 2, failed: 0, skipped: 0 });
  });

  it("keeps a test stage's artifact in its result, and still gives Deploy the build's", () => {
    const TEST_ART = { key: 'runs/r/Test-1.tar', sha256: 'd'.repeat(64), bytes: 30 };
    const { run } = drive([ok({ commit: SHA, artifact: ART }), ok({ artifact: BUILD_ART }), ok({ artifact: TEST_ART, tests: { total: 1, passed: 1, failed: 0, skipped: 0 } })]);
    expect(run.stages[2]!.result?.artifact).toEqual(TEST_ART);
    expect(pendingJobs(run)[0]).toMatchObject({ type: 'deploy', input: BUILD_ART });
  });

  it('a failed stage fails the run and skips the later stages', () => {
    const { run, events } = drive([ok({ commit: SHA, artifact: ART }), ok({ artifact: BUILD_ART }), ['FAILED', { tests: { total: 2, passed: 1, failed: 1, skipped: 0 } }]]);
    expect(run.status).toBe('FAILED');
    expect(run.stages.map((s) => s.status)).toEqual(['SUCCEEDED', 'SUCCEEDED', 'FAILED', 'SKIPPED', 'SKIPPED']);
    expect(run.stages[2]!.result?.tests?.failed).toBe(1);
    expect(run.message).toMatch(/stage Test failed/);
    expect(events.at(-1)).toMatchObject({ type: 'run.finished', status: 'FAILED' });
  });

  it('ignores a duplicate or late result', () => {
    let run = fresh();
    const job = pendingJobs(run)[0]!;
    const first = step(run, { type: 'stage-result', result: result(job, 'SUCCEEDED', { commit: SHA, artifact: ART }) }, t(5));
    run = first.run;
    const again = step(run, { type: 'stage-result', result: result(job, 'SUCCEEDED', { commit: SHA, artifact: ART }) }, t(6));
    expect(again.changed).toBe(false);
    expect(again.run).toBe(run);
    expect(again.events).toEqual([]);
  });

  it('ignores a result for a job id that is not running', () => {
    const run = fresh();
    const job = { ...pendingJobs(run)[0]!, jobId: 'run-00000001.Source.9' } as StageJob;
    expect(step(run, { type: 'stage-result', result: result(job, 'SUCCEEDED') }, t(5)).changed).toBe(false);
  });

  it('a lost stage job fails the run with the reason', () => {
    const run = fresh();
    const tr = step(run, { type: 'stage-lost', jobId: pendingJobs(run)[0]!.jobId, reason: 'job stalled more than allowable limit' }, t(5));
    expect(tr.run.status).toBe('FAILED');
    expect(tr.run.stages[0]).toMatchObject({ status: 'FAILED', message: 'job stalled more than allowable limit' });
    expect(tr.run.stages.slice(1).every((s) => s.status === 'SKIPPED')).toBe(true);
  });

  it('cancel cancels the running stage and skips the rest; later inputs change nothing', () => {
    const run = drive([ok({ commit: SHA, artifact: ART })]).run;
    const buildJob = pendingJobs(run)[0]!;
    const tr = step(run, { type: 'cancel', reason: 'user' }, t(30));
    expect(tr.run.status).toBe('CANCELLED');
    expect(tr.run.stages.map((s) => s.status)).toEqual(['SUCCEEDED', 'CANCELLED', 'SKIPPED', 'SKIPPED', 'SKIPPED']);
    expect(tr.events.map((e) => e.type)).toEqual(['stage.finished', 'run.finished']);
    expect(step(tr.run, { type: 'stage-result', result: result(buildJob, 'SUCCEEDED') }, t(31)).changed).toBe(false);
    expect(step(tr.run, { type: 'cancel', reason: 'again' }, t(31)).changed).toBe(false);
  });

  it('cancel with wait lets the running stage finish, then ends the run CANCELLED instead of starting the next', () => {
    const run = drive([ok({ commit: SHA, artifact: ART })]).run;
    const buildJob = pendingJobs(run)[0]!;
    const asked = step(run, { type: 'cancel', reason: 'release freeze', mode: 'wait' }, t(30));
    expect(asked.changed).toBe(true);
    expect(asked.events).toEqual([]);
    expect(asked.run).toMatchObject({ status: 'RUNNING', stopRequested: { reason: 'release freeze', at: t(30).toISOString() } });
    expect(pendingJobs(asked.run)).toEqual([buildJob]); // the running stage goes on
    expect(step(asked.run, { type: 'cancel', reason: 'again', mode: 'wait' }, t(31)).changed).toBe(false);

    const done = step(asked.run, { type: 'stage-result', result: result(buildJob, 'SUCCEEDED', { artifact: BUILD_ART }) }, t(40));
    expect(done.run.status).toBe('CANCELLED');
    expect(done.run.message).toBe('stopped after Build: release freeze');
    expect(done.run.stages.map((s) => s.status)).toEqual(['SUCCEEDED', 'SUCCEEDED', 'SKIPPED', 'SKIPPED', 'SKIPPED']);
    expect(done.run.stages[1]!.result).toEqual({ artifact: BUILD_ART });
    expect(pendingJobs(done.run)).toEqual([]);
    expect(done.events.map((e) => e.type)).toEqual(['stage.finished', 'run.finished']);
  });

  it('a waiting cancel naming a stage that has finished cancels the stage started since; naming the running one waits', () => {
    const run = drive([ok({ commit: SHA, artifact: ART })]).run; // Source done, Build running
    const late = step(run, { type: 'cancel', reason: 'freeze', mode: 'wait', after: 'Source' }, t(30));
    expect(late.run).toMatchObject({ status: 'CANCELLED', message: 'stopped after Source: freeze' });
    expect(late.run.stages.map((s) => s.status)).toEqual(['SUCCEEDED', 'CANCELLED', 'SKIPPED', 'SKIPPED', 'SKIPPED']);
    expect(late.events.map((e) => e.type)).toEqual(['stage.finished', 'run.finished']);
    const onTime = step(run, { type: 'cancel', reason: 'freeze', mode: 'wait', after: 'Build' }, t(30));
    expect(onTime.run).toMatchObject({ status: 'RUNNING', stopRequested: { reason: 'freeze' } });
    const unknown = step(run, { type: 'cancel', reason: 'freeze', mode: 'wait', after: 'Nope' }, t(30));
    expect(unknown.run.status).toBe('RUNNING');
  });

  it('after a waiting cancel: a failing stage still fails the run, an abandoning cancel ends it at once, a last stage just finishes', () => {
    const waiting = step(drive([ok({ commit: SHA, artifact: ART })]).run, { type: 'cancel', reason: 'r', mode: 'wait' }, t(30)).run;
    const buildJob = pendingJobs(waiting)[0]!;
    expect(step(waiting, { type: 'stage-result', result: result(buildJob, 'FAILED', {}, 'exit 2') }, t(40)).run.status).toBe('FAILED');
    const abandoned = step(waiting, { type: 'cancel', reason: 'now' }, t(41)).run;
    expect(abandoned).toMatchObject({ status: 'CANCELLED', message: 'now' });
    expect(abandoned.stages[1]!.status).toBe('CANCELLED');

    let last = drive([ok({ commit: SHA, artifact: ART }), ok({ artifact: BUILD_ART }), ok(), ok({ url: 'http://127.0.0.1:1' })]).run;
    last = step(last, { type: 'cancel', reason: 'r', mode: 'wait' }, t(50)).run;
    const monitorJob = pendingJobs(last)[0]!;
    expect(step(last, { type: 'stage-result', result: result(monitorJob, 'SUCCEEDED') }, t(60)).run.status).toBe('SUCCEEDED');
  });

  it('fails a stage whose input is missing instead of enqueuing it', () => {
    const { run } = drive([ok({ commit: SHA })]);
    expect(run.status).toBe('FAILED');
    expect(run.stages[1]).toMatchObject({ status: 'FAILED', message: 'no artifact before stage Build' });
  });

  it('fails when the Source stage resolved no commit', () => {
    const { run } = drive([ok({ artifact: ART })]);
    expect(run.stages[1]!.message).toBe('the Source stage resolved no commit');
  });

  it('emits events that parse and durations that add up', () => {
    const { events } = drive([ok({ commit: SHA, artifact: ART }), ['FAILED']]);
    for (const e of events) expect(RunEvent.parse(e)).toBeTruthy();
    const buildFinished = events.find((e) => e.type === 'stage.finished' && e.stage === 'Build');
    expect(buildFinished).toMatchObject({ status: 'FAILED', durationMs: 1000 });
  });
});
