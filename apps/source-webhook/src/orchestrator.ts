import { type PipelineDefinition, type Run, type StageJob, type Trigger } from '@conveyor/contracts';
import type { Logger } from '@conveyor/service-kit';
import { completionInput } from './domain/outcome.js';
import { createRun, step, type RunInput } from './domain/state-machine.js';
import type { DeliveryDecision, JobDispatcher, RunStore } from './ports.js';

export interface OrchestratorDeps {
  runs: RunStore;
  jobs: JobDispatcher;
  logger: Logger;
  clock?: () => Date;
  newId: () => string;
}

/** An input addressed to a run. */
export interface RunInputFor {
  runId: string;
  input: RunInput;
}

export type StartOutcome = { runId: string; duplicate: false } | { runId?: string; duplicate: true; decision: DeliveryDecision['decision'] };

const MAX_CONFLICT_RETRIES = 50;
const CACHE_LIMIT = 10_000;

/**
 * The thin adapter around the pure state machine: load → step → store (compare-and-set, with the
 * events) → enqueue the outbox. A crash between store and enqueue is mended by `reconcile`.
 */
export class Orchestrator {
  private readonly clock: () => Date;
  /**
   * Runs this process stored last. The compare-and-set refuses a stale copy, so a hit saves a read
   * and a parse per transition without risking a lost update.
   */
  private readonly cache = new Map<string, Run>();
  constructor(private readonly deps: OrchestratorDeps) {
    this.clock = deps.clock ?? (() => new Date());
  }

  async startRun(definition: PipelineDefinition, trigger: Trigger, deliveryKey?: string): Promise<StartOutcome> {
    const { runs } = this.deps;
    const number = await runs.nextRunNumber(definition.name);
    const now = this.clock();
    const { run, events } = createRun({ id: this.deps.newId(), number, definition, trigger }, now);
    const delivery = deliveryKey ? { key: deliveryKey, decision: { outcome: 'run-created' as const, runId: run.id, at: now.toISOString() } } : undefined;
    const saved = await runs.save(run, 'new', events, delivery);
    if (!saved.saved) {
      if (saved.seenDecision) return { ...(saved.seenDecision.runId ? { runId: saved.seenDecision.runId } : {}), duplicate: true, decision: saved.seenDecision };
      throw new Error(`run id collision: ${run.id}`);
    }
    this.deps.logger.info({ runId: run.id, pipeline: run.pipeline, trigger: trigger.type }, 'run created');
    this.remember(run);
    await this.dispatch([run]);
    return { runId: run.id, duplicate: false };
  }

  /** Applies one input to a run, retrying on concurrent updates, and enqueues what it decided. */
  async apply(runId: string, input: RunInput): Promise<Run | undefined> {
    const { run, changed } = await this.store(runId, input);
    if (run && changed) await this.dispatch([run]);
    return run;
  }

  /**
   * Applies many inputs (in order within a run, runs in parallel) and enqueues all the jobs they
   * decided in one go. Returns the inputs that could not be applied (they are retried later).
   */
  async handleInputs(items: readonly RunInputFor[]): Promise<RunInputFor[]> {
    const byRun = new Map<string, RunInputFor[]>();
    for (const item of items) {
      const list = byRun.get(item.runId);
      if (list) list.push(item);
      else byRun.set(item.runId, [item]);
    }
    const stored: Run[] = [];
    const failed: RunInputFor[] = [];
    await Promise.all(
      [...byRun.values()].map(async (list) => {
        for (const [i, item] of list.entries()) {
          try {
            const { run, changed } = await this.store(item.runId, item.input);
            if (run && changed) stored.push(run);
          } catch (err) {
            this.deps.logger.warn({ err, runId: item.runId, input: item.input.type }, 'input not applied; it will be retried');
            failed.push(...list.slice(i));
            return;
          }
        }
      }),
    );
    // Only the last stored version of a run says which jobs it waits for.
    const latest = new Map(stored.map((r) => [r.id, r]));
    await this.dispatch([...latest.values()]);
    return failed;
  }

  /** load (or cached) → step → compare-and-set, retried on conflict. `changed` is false for a no-op input. */
  private async store(runId: string, input: RunInput): Promise<{ run: Run | undefined; changed: boolean }> {
    for (let i = 0; i < MAX_CONFLICT_RETRIES; i++) {
      const cached = this.cache.get(runId);
      const run = cached ?? (await this.deps.runs.get(runId));
      if (!run) {
        this.deps.logger.warn({ runId, input: input.type }, 'input for an unknown run ignored');
        return { run: undefined, changed: false };
      }
      const tr = step(run, input, this.clock());
      if (!tr.changed) {
        // A cached copy may be behind the store: only the stored run can say an input is stale.
        if (cached) {
          this.cache.delete(runId);
          continue;
        }
        return { run, changed: false };
      }
      const next: Run = { ...tr.run, version: run.version + 1 };
      const saved = await this.deps.runs.save(next, run.version, tr.events);
      if (!saved.saved) {
        this.cache.delete(runId);
        continue;
      }
      this.remember(next);
      if (next.status !== run.status) this.deps.logger.info({ runId, pipeline: run.pipeline, status: next.status }, 'run status changed');
      return { run: next, changed: true };
    }
    throw new Error(`run ${runId}: too many concurrent updates`);
  }

  private remember(run: Run): void {
    this.cache.delete(run.id);
    if (['SUCCEEDED', 'FAILED', 'CANCELLED'].includes(run.status)) return;
    this.cache.set(run.id, run);
    if (this.cache.size > CACHE_LIMIT) this.cache.delete(this.cache.keys().next().value!);
  }

  private async dispatch(runs: readonly Run[]): Promise<void> {
    const jobs = runs.flatMap((r) => r.outbox);
    if (jobs.length === 0) return;
    try {
      await this.deps.jobs.ensure(jobs);
    } catch (err) {
      // The runs are stored with their outboxes; reconcile() enqueues them later.
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
        for (const job of run?.outbox ?? []) {
          if (await this.settle(job)) settled++;
        }
      } catch (err) {
        // One unreadable run must not stop the others from being settled.
        this.deps.logger.error({ err, runId: id }, 'reconcile of a run failed');
      }
    }
    return { checked: ids.length, settled };
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
        await this.apply(job.runId, input);
        return true;
      }
      case 'failed':
        await this.apply(job.runId, { type: 'stage-lost', jobId: job.jobId, reason: state.reason ?? 'stage job failed' });
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
