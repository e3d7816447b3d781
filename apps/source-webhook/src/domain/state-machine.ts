import {
  isTerminalRun,
  stageJobId,
  type ArtifactRef,
  type PipelineDefinition,
  type Run,
  type RunEvent,
  type StageJob,
  type StageRecord,
  type StageResult,
  type Trigger,
} from '@conveyor/contracts';
import { resolveVariables, runVariables, unsetPipelineVariable } from './variables.js';

/** What can happen to a run. Every input is idempotent: a repeat leaves the run unchanged. */
export type RunInput =
  | { type: 'stage-result'; result: StageResult }
  /** The stage's job ended without a result (stalled past its limit, malformed, removed). */
  | { type: 'stage-lost'; jobId: string; reason: string }
  /**
   * `abandon` (the default): the run ends now, its running stage CANCELLED. `wait`: the running stage
   * finishes, then the run ends CANCELLED instead of starting the next one (a last stage just finishes).
   * `after` (wait): the stage that was running when the stop was asked for. If it has finished and a
   * later stage started meanwhile (its result was stored first), that later stage is cancelled now:
   * the stop means "nothing after `after`", whichever write came first.
   */
  | { type: 'cancel'; reason: string; mode?: 'abandon' | 'wait'; after?: string };

export interface Transition {
  run: Run;
  events: RunEvent[];
  /** False when the input changed nothing (a duplicate or a late result): nothing to store. */
  changed: boolean;
}

export interface NewRun {
  id: string;
  number: number;
  definition: PipelineDefinition;
  trigger: Trigger;
  /** Values for the pipeline's declared variables (checked by the caller: `runVariables`); the rest take their defaults. */
  variables?: ReadonlyArray<{ name: string; value: string }>;
}


/**
 * Creates a run and starts it: the Source stage is RUNNING (its job is `pendingJobs(run)`). A run that
 * could not get past a later stage for want of a pipeline variable's value (one without a default, in a
 * run from a push) ends at once instead, FAILED at Source, saying which: nothing is spent on it.
 */
export function createRun(input: NewRun, now: Date): Transition {
  const at = now.toISOString();
  const { webhookSecret: _secret, triggers: _triggers, ...source } = input.definition.source;
  const stages: StageRecord[] = [
    { name: 'Source', type: 'source', status: 'PENDING', attempt: 0 },
    ...input.definition.stages.map((s): StageRecord => ({ name: s.name, type: s.type, status: 'PENDING', attempt: 0 })),
  ];
  const { variables } = runVariables(input.definition, input.variables);
  const queued: Run = {
    v: 1,
    id: input.id,
    number: input.number,
    pipeline: input.definition.name,
    status: 'QUEUED',
    trigger: input.trigger,
    ...(input.trigger.commit ? { commit: input.trigger.commit } : {}),
    createdAt: at,
    ...(variables ? { variables } : {}),
    stages,
    plan: { source, stages: input.definition.stages },
    version: 0,
  };
  const created: RunEvent = { v: 1, type: 'run.created', at, runId: queued.id, pipeline: queued.pipeline, trigger: queued.trigger.type };
  const started = startStage(patch(queued, { status: 'RUNNING', startedAt: at }), 0, at);
  const unset = variables ? unsetPipelineVariable(input.definition, variables) : undefined;
  if (unset) {
    const failed = failStage(started.run, 0, unset, at);
    return { run: failed.run, events: [created, ...started.events, ...failed.events], changed: true };
  }
  return { run: started.run, events: [created, ...started.events], changed: true };
}

/** The pure transition function: (run, input, now) → (run', events). */
export function step(run: Run, input: RunInput, now: Date): Transition {
  const unchanged: Transition = { run, events: [], changed: false };
  if (isTerminalRun(run)) return unchanged;
  const at = now.toISOString();
  switch (input.type) {
    case 'stage-result': {
      const i = runningStageIndex(run, input.result.jobId);
      if (i < 0) return unchanged;
      return input.result.status === 'SUCCEEDED'
        ? succeedStage(run, i, input.result, at)
        : failStage(run, i, input.result.message ?? 'stage failed', at, input.result);
    }
    case 'stage-lost': {
      const i = runningStageIndex(run, input.jobId);
      if (i < 0) return unchanged;
      return failStage(run, i, input.reason, at);
    }
    case 'cancel':
      if (input.mode !== 'wait') return finishRun(run, 'CANCELLED', input.reason, at, 'CANCELLED');
      if (run.stopRequested) return unchanged;
      if (input.after !== undefined && startedSince(run, input.after)) {
        return finishRun(run, 'CANCELLED', `stopped after ${input.after}: ${input.reason}`, at, 'CANCELLED');
      }
      return { run: patch(run, { stopRequested: { reason: input.reason, at } }), events: [], changed: true };
    default:
      return assertNever(input);
  }
}

/** Whether the running stage comes after the stage named `after` (which has then finished). */
function startedSince(run: Run, after: string): boolean {
  const named = run.stages.findIndex((s) => s.name === after);
  const running = run.stages.findIndex((s) => s.status === 'RUNNING');
  return named >= 0 && running > named;
}

function runningStageIndex(run: Run, jobId: string): number {
  return run.stages.findIndex((s) => s.status === 'RUNNING' && s.jobId === jobId);
}

function succeedStage(run: Run, i: number, result: StageResult, at: string): Transition {
  const stage = run.stages[i]!;
  const done = patch(stage, { status: 'SUCCEEDED', finishedAt: at, result: result.output });
  const next = stage.type === 'source' && result.output.commit ? patch(replaceStage(run, i, done), { commit: result.output.commit }) : replaceStage(run, i, done);
  const finished = stageFinished(next, done, at);
  if (i + 1 >= run.stages.length) {
    const end = finishRun(next, 'SUCCEEDED', undefined, at, 'SKIPPED');
    return { ...end, events: [finished, ...end.events] };
  }
  if (run.stopRequested) {
    const end = finishRun(next, 'CANCELLED', `stopped after ${stage.name}: ${run.stopRequested.reason}`, at, 'SKIPPED');
    return { ...end, events: [finished, ...end.events] };
  }
  const started = startStage(next, i + 1, at);
  return { ...started, events: [finished, ...started.events] };
}

function failStage(run: Run, i: number, message: string, at: string, result?: StageResult): Transition {
  const stage = run.stages[i]!;
  const failed = patch(stage, result ? { status: 'FAILED', finishedAt: at, message, result: result.output } : { status: 'FAILED', finishedAt: at, message });
  const next = replaceStage(run, i, failed);
  const end = finishRun(next, 'FAILED', `stage ${stage.name} failed: ${message}`, at, 'SKIPPED');
  return { ...end, events: [stageFinished(next, failed, at), ...end.events] };
}

/** Ends the run; a RUNNING stage becomes `runningBecomes`, PENDING ones SKIPPED. */
function finishRun(run: Run, status: 'SUCCEEDED' | 'FAILED' | 'CANCELLED', message: string | undefined, at: string, runningBecomes: 'SKIPPED' | 'CANCELLED'): Transition {
  const events: RunEvent[] = [];
  const stages = run.stages.map((s): StageRecord => {
    if (s.status === 'PENDING') return patch(s, { status: 'SKIPPED' });
    if (s.status !== 'RUNNING') return s;
    const closed = patch(s, { status: runningBecomes, finishedAt: at });
    events.push(stageFinished(run, closed, at));
    return closed;
  });
  const ended = patch(run, message ? { status, stages, finishedAt: at, message } : { status, stages, finishedAt: at });
  const durationMs = Math.max(0, Date.parse(at) - Date.parse(run.startedAt ?? run.createdAt));
  events.push({ v: 1, type: 'run.finished', at, runId: run.id, pipeline: run.pipeline, status, durationMs });
  return { run: ended, events, changed: true };
}

function startStage(run: Run, i: number, at: string): Transition {
  const stage = run.stages[i]!;
  const attempt = stage.attempt + 1;
  const jobId = stageJobId(run.id, stage.name, attempt);
  const next = replaceStage(run, i, patch(stage, { status: 'RUNNING', attempt, jobId, startedAt: at }));
  // Built here only to know it can be (the job itself is rebuilt from the run when sent: pendingJobs).
  const job = buildJob(run, i, attempt, jobId);
  // The plan cannot feed this stage (e.g. no artifact yet): fail it rather than enqueue nonsense.
  if ('error' in job) return failStage(next, i, job.error, at);
  const event: RunEvent = { v: 1, type: 'stage.started', at, runId: run.id, pipeline: run.pipeline, stage: stage.name, stageType: stage.type, attempt };
  return { run: next, events: [event], changed: true };
}

/**
 * The jobs a run waits for: one per RUNNING stage. They are not stored with the run: a job is rebuilt
 * from the run alone (its plan and what earlier, finished stages produced), and comes out the same
 * every time, so the stored run is its own transactional outbox (ADR 0002). A RUNNING stage whose job
 * cannot be rebuilt (which `startStage` never lets happen) is listed apart, for the reconciler to fail.
 */
export function pendingWork(run: Run): { jobs: StageJob[]; unbuildable: { jobId: string; reason: string }[] } {
  const jobs: StageJob[] = [];
  const unbuildable: { jobId: string; reason: string }[] = [];
  run.stages.forEach((stage, i) => {
    if (stage.status !== 'RUNNING' || !stage.jobId) return;
    const job = buildJob(run, i, stage.attempt, stage.jobId);
    if ('error' in job) unbuildable.push({ jobId: stage.jobId, reason: job.error });
    else jobs.push(job);
  });
  return { jobs, unbuildable };
}

/** The jobs of a run's RUNNING stages (see `pendingWork`). */
export function pendingJobs(run: Run): StageJob[] {
  return pendingWork(run).jobs;
}

/** The job for stage i, fed by what earlier stages produced. */
function buildJob(run: Run, i: number, attempt: number, jobId: string): StageJob | { error: string } {
  const base = {
    v: 1 as const,
    jobId,
    runId: run.id,
    runNumber: run.number,
    pipeline: run.pipeline,
    stage: run.stages[i]!.name,
    stageIndex: i,
    attempt,
    trigger: run.trigger,
  };
  if (i === 0) return Object.assign(base, { type: 'source' as const, repository: run.plan.source.repository });
  const def = run.plan.stages[i - 1]!;
  const input = latestArtifact(run, i);
  const commit = run.commit;
  if (!commit) return { error: 'the Source stage resolved no commit' };
  switch (def.type) {
    case 'build':
    case 'test': {
      if (!input) return { error: `no artifact before stage ${def.name}` };
      const env = resolveVariables(def.env.variables, run, i, 'env.variables');
      if ('error' in env) return env;
      const job = Object.assign(base, { type: def.type, commit, repository: run.plan.source.repository, input, buildspec: def.buildspec, env: { variables: env.env }, timeoutMinutes: def.timeoutMinutes });
      // Its artifacts are never an input here (latestArtifact): the test stage may store them.
      return def.type === 'test' ? Object.assign(job, { storeArtifacts: true as const }) : job;
    }
    case 'deploy': {
      if (!input) return { error: `no artifact before stage ${def.name}` };
      const env = resolveVariables(def.target.env, run, i, 'target.env');
      if ('error' in env) return env;
      return Object.assign(base, { type: 'deploy' as const, commit, input, target: env.env === def.target.env ? def.target : patch(def.target, { env: env.env }) });
    }
    case 'monitor': {
      const url = [...run.stages.slice(0, i)].reverse().find((s) => s.type === 'deploy' && s.result?.url)?.result?.url;
      if (!url) return { error: `no deployed URL before stage ${def.name}` };
      return Object.assign(base, { type: 'monitor' as const, url, verify: def.verify });
    }
    default:
      return assertNever(def);
  }
}

/** The artifact of the nearest earlier source or build stage that produced one (a test stage's is not an input). */
function latestArtifact(run: Run, before: number): ArtifactRef | undefined {
  for (let j = before - 1; j >= 0; j--) {
    // A test stage's artifacts (reports, coverage) are kept for download: what it tested goes on.
    if (run.stages[j]!.type === 'test') continue;
    const artifact = run.stages[j]!.result?.artifact;
    if (artifact) return artifact;
  }
  return undefined;
}

/**
 * A copy of `obj` with `changes` applied. Not `{ ...obj, key }`: on Node 20 (V8 11.3) a key added
 * after a spread costs about 1 µs, which made a transition ten times slower (docs/benchmarks.md).
 */
function patch<T extends object>(obj: T, changes: Partial<T>): T {
  return Object.assign({}, obj, changes);
}

function replaceStage(run: Run, i: number, stage: StageRecord): Run {
  return patch(run, { stages: run.stages.map((s, j) => (j === i ? stage : s)) });
}

function stageFinished(run: Run, stage: StageRecord, at: string): RunEvent {
  const durationMs = stage.startedAt ? Math.max(0, Date.parse(at) - Date.parse(stage.startedAt)) : 0;
  return { v: 1, type: 'stage.finished', at, runId: run.id, pipeline: run.pipeline, stage: stage.name, stageType: stage.type, attempt: stage.attempt, status: stage.status, durationMs };
}

function assertNever(x: never): never {
  throw new Error(`unhandled case: ${JSON.stringify(x)}`);
}
