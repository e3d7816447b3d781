import { isTerminalRun, type PipelineDefinition, type Run, type RunEvent, type StageJob, type Trigger } from '@conveyor/contracts';
import { explainFailedStageJob, UnavailableError, type Logger } from '@conveyor/service-kit';
import { completionInput } from './domain/outcome.js';
import { createRun, pendingWork, step, type NewRun, type RunInput } from './domain/state-machine.js';
import type { DeliveryDecision, JobDispatcher, RunStore, RunUpdate } from './ports.js';

export interface OrchestratorDeps {
  runs: RunStore;
  jobs: JobDispatcher;
  logger: Logger;
  clock?: () => Date;
  newId: () => string;
  /** When a cancel's removal and notices are sent again (default 1 s and 10 s after the first). */
  cancelRepeatsMs?: readonly number[];
}

/** An input addressed to a run. */
export interface RunInputFor {
  runId: string;
  input: RunInput;
}

export type CancelOutcome =
  | { outcome: 'cancelled'; run: Run }
  /** A waiting cancel was taken: the running stage finishes, then the run ends. */
  | { outcome: 'stopping'; run: Run }
  | { outcome: 'ended'; run: Run }
  | { outcome: 'not-found' };

export type StartOutcome = { runId: string; duplicate: false } | { runId?: string; duplicate: true; decision: DeliveryDecision['decision'] };

const MAX_CONFLICT_RETRIES = 50;
const CACHE_LIMIT = 10_000;
const CANCEL_REPEATS_MS = [1000, 10_000];

/**
 * The thin adapter around the pure state machine: load → step → store (compare-and-set, with the
 * events) → enqueue the jobs of its RUNNING stages. A crash between store and enqueue is mended by
 * `reconcile`.
 */
export class Orchestrator {
  private readonly clock: () => Date;
  /**
   * Runs this process stored last. The compare-and-set refuses a stale copy, so a hit saves a read
   * and a parse per transition without risking a lost update.
   */
  private readonly cache = new Map<string, Run>();
  /** Pending repeats of cancels, cleared by close(). */
  private readonly repeats = new Set<NodeJS.Timeout>();
  constructor(private readonly deps: OrchestratorDeps) {
    this.clock = deps.clock ?? (() => new Date());
  }

  async startRun(definition: PipelineDefinition, trigger: Trigger, opts: { deliveryKey?: string; variables?: NewRun['variables'] } = {}): Promise<StartOutcome> {
    const { runs } = this.deps;
    const { deliveryKey, variables } = opts;
    // A delivery already decided (a redelivery, a replay) is answered before a run number is spent on it.
    // Two copies arriving at once both get past this; create() below refuses the second atomically, and
    // only then is a number skipped.
    const seen = deliveryKey ? await runs.deliveryDecision(deliveryKey) : undefined;
    if (seen) return { ...(seen.runId ? { runId: seen.runId } : {}), duplicate: true, decision: seen };
    const number = await runs.nextRunNumber(definition.name);
    const now = this.clock();
    const { run, events } = createRun({ id: this.deps.newId(), number, definition, trigger, ...(variables ? { variables } : {}) }, now);
    const delivery = deliveryKey ? { key: deliveryKey, decision: { outcome: 'run-created' as const, runId: run.id, at: now.toISOString() } } : undefined;
    const saved = await runs.create(run, events, delivery);
    if (!saved.created) {
      if (saved.seenDecision) return { ...(saved.seenDecision.runId ? { runId: saved.seenDecision.runId } : {}), duplicate: true, decision: saved.seenDecision };
      throw new Error(`run id collision: ${run.id}`);
    }
    if (isTerminalRun(run)) this.deps.logger.warn({ runId: run.id, pipeline: run.pipeline, trigger: trigger.type, status: run.status, message: run.message }, 'run created ended');
    else this.deps.logger.info({ runId: run.id, pipeline: run.pipeline, trigger: trigger.type }, 'run created');
    this.remember(run);
    await this.dispatch([run]);
    return { runId: run.id, duplicate: false };
  }

  /**
   * Applies many inputs and enqueues all the jobs they decided. The inputs of one run are applied in
   * order and stored as one transition; all runs are stored by one compare-and-set round trip, and
   * those another writer changed meanwhile are read again and retried. Returns the inputs that could
   * not be applied (the caller retries them later).
   */
  async handleInputs(items: readonly RunInputFor[]): Promise<RunInputFor[]> {
    const byRun = new Map<string, RunInputFor[]>();
    for (const item of items) {
      const list = byRun.get(item.runId);
      if (list) list.push(item);
      else byRun.set(item.runId, [item]);
    }
    const stored: Run[] = [];
    const unchanged: Run[] = [];
    const failed: RunInputFor[] = [];
    let todo = [...byRun.keys()];
    for (let round = 0; todo.length > 0; round++) {
      if (round === MAX_CONFLICT_RETRIES) {
        this.deps.logger.warn({ runs: todo }, 'inputs not applied: too many concurrent updates; they will be retried');
        for (const id of todo) failed.push(...byRun.get(id)!);
        break;
      }
      const again: string[] = [];
      const updates: (RunUpdate & { from: Run['status'] })[] = [];
      await Promise.all(
        todo.map(async (runId) => {
          const inputs = byRun.get(runId)!;
          const cached = this.cache.get(runId);
          try {
            const run = cached ?? (await this.deps.runs.get(runId));
            if (!run) {
              this.deps.logger.warn({ runId, inputs: inputs.map((i) => i.input.type) }, 'inputs for an unknown run ignored');
              return;
            }
            const { next, events } = this.fold(run, inputs);
            if (next !== run) {
              const stopJobs = stoppedJobs(run, next);
              updates.push({ run: { ...next, version: run.version + 1 }, expectedVersion: run.version, events, from: run.status, ...(stopJobs.length ? { stopJobs } : {}) });
            } else if (cached) {
              // Nothing changed. A cached copy may be behind the store: only the stored run can say so.
              this.cache.delete(runId);
              again.push(runId);
            } else {
              // Stale or repeated, by the stored run. Its jobs are sent again (BullMQ keeps one per id):
              // this input may be a redelivery after a store whose reply was lost.
              unchanged.push(run);
            }
          } catch (err) {
            // Unreadable, or an input the state machine cannot take: only this run's inputs wait.
            this.deps.logger.warn({ err, runId }, 'inputs not applied; they will be retried');
            failed.push(...inputs);
          }
        }),
      );
      let saved: boolean[];
      try {
        saved = await this.deps.runs.update(updates);
      } catch (err) {
        this.deps.logger.warn({ err, runs: updates.map((u) => u.run.id) }, 'inputs not stored; they will be retried');
        for (const u of updates) failed.push(...byRun.get(u.run.id)!);
        saved = [];
      }
      saved.forEach((ok, i) => {
        const { run, from } = updates[i]!;
        if (!ok) {
          this.cache.delete(run.id);
          again.push(run.id);
          return;
        }
        this.remember(run);
        stored.push(run);
        if (run.status !== from) this.deps.logger.info({ runId: run.id, pipeline: run.pipeline, status: run.status }, 'run status changed');
      });
      todo = again;
    }
    await this.dispatch([...stored, ...unchanged]);
    return failed;
  }

  /**
   * Cancels a run that has not ended. `abandon`: its RUNNING stage becomes CANCELLED and the later ones
   * SKIPPED, then the work in flight is stopped (the job dropped from its queue, or its worker told to
   * abort); cancelling a cancelled run sends the stop notices again. `wait`: the running stage goes on,
   * and the run ends CANCELLED when it has finished. A run that ended otherwise is left as it is.
   */
  async cancelRun(runId: string, reason: string, mode: 'abandon' | 'wait' = 'abandon'): Promise<CancelOutcome> {
    const before = await this.deps.runs.get(runId);
    if (!before) return { outcome: 'not-found' };
    // A wait names the stage running now: if its result is stored first and starts the next stage, the
    // state machine cancels that one instead of letting the run stop only after it.
    const after = mode === 'wait' ? before.stages.find((s) => s.status === 'RUNNING')?.name : undefined;
    if (!isTerminalRun(before)) await this.applyOne(runId, { type: 'cancel', reason, mode, ...(after === undefined ? {} : { after }) });
    const run = isTerminalRun(before) ? before : await this.deps.runs.get(runId);
    if (!run) return { outcome: 'not-found' };
    // A wait that came too late for its stage cancelled the one started since: stop that one's work below.
    const caughtUp = mode === 'wait' && run.status === 'CANCELLED' && run.stages.some((s) => s.status === 'CANCELLED');
    if (mode === 'wait' && !caughtUp) {
      // Ended before this request (whatever ended it, an earlier stop included), or on its own before the
      // request was stored (the state machine ignored it): too late.
      if (isTerminalRun(before) || (isTerminalRun(run) && !run.stopRequested)) return { outcome: 'ended', run };
      // Taken and stored; the run may have moved on since (the reply shows where it is now).
      this.deps.logger.info({ runId, pipeline: run.pipeline, reason }, 'run stop requested: it ends after its running stage');
      return { outcome: 'stopping', run };
    }
    if (run.status !== 'CANCELLED') return { outcome: 'ended', run };
    const stopping = run.stages.filter((s) => s.status === 'CANCELLED' && s.jobId).map((s) => ({ type: s.type, jobId: s.jobId! }));
    // The orchestrator that stored the transition starting a stage enqueues its job just after: if the
    // cancel came in between, that job arrives after the first removal. Both are repeated later (in this
    // process: a restart within those seconds drops them), and so are they when the first attempt fails.
    for (const ms of this.deps.cancelRepeatsMs ?? CANCEL_REPEATS_MS) {
      const timer = setTimeout(() => {
        this.repeats.delete(timer);
        this.deps.jobs.cancel(stopping).catch((err: unknown) => this.deps.logger.warn({ err, runId }, 'repeated cancel failed'));
      }, ms);
      timer.unref();
      this.repeats.add(timer);
    }
    // The marks and notices went out with the transition; this also drops waiting jobs from their queues.
    // Failing, it is left to the repeats: the cancel itself is stored, its work already told.
    await this.deps.jobs.cancel(stopping).catch((err: unknown) => this.deps.logger.warn({ err, runId }, 'cancel: removing its jobs from their queues failed; repeated later'));
    if (!isTerminalRun(before)) this.deps.logger.info({ runId, pipeline: run.pipeline, stopping: stopping.map((j) => j.jobId), reason }, 'run cancelled');
    return { outcome: 'cancelled', run };
  }

  /** Drops the pending repeats of cancels (on shutdown, before the queues close). */
  close(): void {
    for (const timer of this.repeats) clearTimeout(timer);
    this.repeats.clear();
  }

  /** A run's inputs applied in order: the last run and every event on the way (the same run if none changed it). */
  private fold(run: Run, inputs: readonly RunInputFor[]): { next: Run; events: RunEvent[] } {
    let next = run;
    const events: RunEvent[] = [];
    for (const { input } of inputs) {
      const tr = step(next, input, this.clock());
      if (tr.changed) {
        next = tr.run;
        events.push(...tr.events);
      }
    }
    return { next, events };
  }

  private remember(run: Run): void {
    this.cache.delete(run.id);
    if (isTerminalRun(run)) return;
    this.cache.set(run.id, run);
    if (this.cache.size > CACHE_LIMIT) this.cache.delete(this.cache.keys().next().value!);
  }

  private async dispatch(runs: readonly Run[]): Promise<void> {
    if (runs.length === 0) return;
    try {
      const jobs = runs.flatMap((run) => pendingWork(run).jobs);
      if (jobs.length) await this.deps.jobs.ensure(jobs);
    } catch (err) {
      // The runs are stored with their RUNNING stages; reconcile() enqueues their jobs later.
      this.deps.logger.warn({ err, runs: runs.map((r) => r.id) }, 'enqueue deferred to the reconciler');
    }
  }

  /**
   * For every active run: make sure the jobs it waits for exist, and settle jobs that ended without
   * their result reaching us (results lost, job stalled out or malformed). Safe to run anywhere, any time.
   */
  async reconcile(): Promise<{ checked: number; settled: number }> {
    let settled = 0;
    const ids = await this.deps.runs.activeRunIds();
    for (const id of ids) {
      try {
        const run = await this.deps.runs.get(id);
        if (!run) continue;
        const { jobs, unbuildable } = pendingWork(run);
        for (const job of jobs) {
          if (await this.settle(job)) settled++;
        }
        // A RUNNING stage whose job cannot be rebuilt would wait for ever: it fails.
        for (const { jobId, reason } of unbuildable) {
          await this.applyOne(id, { type: 'stage-lost', jobId, reason: `its job cannot be rebuilt: ${reason}` });
          settled++;
        }
      } catch (err) {
        // One unreadable run must not stop the others from being settled.
        this.deps.logger.error({ err, runId: id }, 'reconcile of a run failed');
      }
    }
    return { checked: ids.length, settled };
  }

  private async applyOne(runId: string, input: RunInput): Promise<void> {
    const failed = await this.handleInputs([{ runId, input }]);
    // The store refused or failed (logged by handleInputs): a caller may try again (the API answers 503).
    if (failed.length) throw new UnavailableError(`run ${runId}: ${input.type} could not be stored now; try again`);
  }

  private async settle(job: StageJob): Promise<boolean> {
    const state = await this.deps.jobs.inspect(job);
    switch (state.state) {
      case 'missing':
        await this.deps.jobs.ensure([job]);
        return false;
      case 'completed': {
        const { input, problem } = completionInput(job.jobId, state.result);
        if (problem) this.deps.logger.error({ jobId: job.jobId, problem }, 'stage job completed without a valid result');
        await this.applyOne(job.runId, input);
        return true;
      }
      case 'failed':
        await this.applyOne(job.runId, { type: 'stage-lost', jobId: job.jobId, reason: explainFailedStageJob(state.reason ?? 'stage job failed') });
        return true;
      case 'pending':
        return false;
      default: {
        const never: never = state.state;
        throw new Error(`unknown job state ${String(never)}`);
      }
    }
  }
}

/** The jobs of stages running in `before` that `after` has CANCELLED: their work must be told to stop. */
function stoppedJobs(before: Run, after: Run): string[] {
  return before.stages.flatMap((s, i) => (s.status === 'RUNNING' && s.jobId && after.stages[i]?.status === 'CANCELLED' ? [s.jobId] : []));
}
