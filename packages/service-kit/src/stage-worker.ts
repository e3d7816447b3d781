import { UnrecoverableError, WaitingError, Worker, type ConnectionOptions, type Job } from 'bullmq';
import { CANCEL_NOTICE_WINDOW_MS, cancelChannel, cancelledJobKey, cancelNoticesKey, describeIssues, StageJob, StageOutput, StageResultOutput, stageResultOf, type StageJobOf, type StageResult } from '@conveyor/contracts';
import type { Redis } from 'ioredis';
import { PermanentJobError } from './errors.js';
import { logErrors, RUN_CANCELLED, SHUTTING_DOWN } from './lifecycle.js';
import type { Logger } from './logger.js';

/** What a stage handler decides; the wrapper adds the identity and timing fields of the StageResult. */
export interface StageOutcome {
  status: 'SUCCEEDED' | 'FAILED';
  message?: string;
  output?: StageOutput;
}

export interface StageContext {
  logger: Logger;
  /** Aborted when the worker loses the job's lock, or a shutdown outlasts its drain time. */
  signal: AbortSignal;
  /** How many times BullMQ has started this job before (0 on the first delivery). */
  deliveries: number;
  /** Why the last delivery failed, when this one is BullMQ's retry after an error (not after a worker died). */
  previousError?: string;
}

export type StageHandler<T extends StageJob['type']> = (job: StageJobOf<T>, ctx: StageContext) => Promise<StageOutcome>;

export interface StageWorkerOptions<T extends StageJob['type']> {
  type: T;
  queueName: string;
  connection: Redis;
  prefix: string;
  handler: StageHandler<T>;
  logger: Logger;
  concurrency: number;
  lockDuration: number;
  stalledInterval: number;
  now?: () => Date;
  /** false: call worker.run() yourself once start-up work is done. Default true. */
  autorun?: boolean;
}

/**
 * Check on publish: a worker never returns a result the orchestrator would refuse, and a handler whose
 * output or status does not fit the contract fails its stage once (with the fault named) instead of
 * running again. The identity and time fields come from the parsed job and the wrapper: only the
 * handler's part needs checking.
 */
function checkOutcome(type: string, outcome: StageOutcome): { status: 'SUCCEEDED' | 'FAILED'; message?: string; output: StageOutput; problem?: string } {
  // As the orchestrator checks it on receipt (StageResult): within the result's limits, or the stage fails here, saying why.
  const output = StageResultOutput.safeParse(outcome.output ?? {});
  const problem = !output.success
    ? describeIssues(output.error, 'output')
    : outcome.status !== 'SUCCEEDED' && outcome.status !== 'FAILED'
      ? `status: must be SUCCEEDED or FAILED, not ${String(outcome.status)}`
      : undefined;
  if (problem !== undefined || !output.success) return { status: 'FAILED', message: `the ${type} stage produced an invalid result: ${problem}`, output: {}, problem };
  return { status: outcome.status, ...(outcome.message ? { message: outcome.message } : {}), output: output.data };
}

/**
 * The first line of a stage log when this delivery of the job is not its first (say why the stage's log
 * shows its start again); undefined for a first delivery.
 */
export function redeliveryNote(ctx: Pick<StageContext, 'deliveries' | 'previousError'>): string | undefined {
  if (ctx.previousError) return `[conveyor] delivery ${ctx.deliveries + 1} of this job: the last one errored (${ctx.previousError})\n`;
  if (ctx.deliveries > 0) return `[conveyor] delivery ${ctx.deliveries + 1} of this job (an earlier worker stopped before finishing)\n`;
  return undefined;
}

/**
 * How many times a stage job is given to a worker that then stops holding it (killed, or its lock lost)
 * before BullMQ fails it for good: the first delivery and this many more.
 */
export const MAX_STALLED_REDELIVERIES = 2;

/** BullMQ's reason for a job that failed for good, said so a person reading a run understands it. */
export function explainFailedStageJob(reason: string): string {
  if (/stalled more than allowable limit/i.test(reason)) {
    return `the worker running it stopped (killed, or out of touch with Redis past its lock) ${MAX_STALLED_REDELIVERIES + 1} times; it is not given to a worker again`;
  }
  return reason;
}

const LOG_REREAD_MS = 30_000;
/**
 * A job created longer ago than this may have been cancelled before the notices this worker remembers
 * (and the log) began: the durable mark is asked before it starts. Half the notices' window, so that
 * clocks of the orchestrator's host (which stamps the job) and this one may disagree by minutes.
 */
const OLD_JOB_MS = CANCEL_NOTICE_WINDOW_MS / 2;

/**
 * Listens for cancel notices (ADR 0007) on a connection of its own: aborts the job a notice names if this
 * worker holds it, and remembers every notice for a while, so a job taken after its notice went out (one
 * the orchestrator enqueued just after the cancel) is not started. Each time it starts listening (at
 * start-up, and again after a lost connection) it also reads the notices sent in the last
 * CANCEL_NOTICE_WINDOW_MS, so one published while it was not listening still stops the job it holds, or
 * keeps it from starting; until it has read them, `listening()` is false and each job is checked against
 * the durable mark before it starts. The log is also read every 30 s. Closed with the worker.
 */
function listenForCancels(worker: Worker, connection: Redis, prefix: string, logger: Logger): { noticed(jobId: string): boolean; listening(): boolean } {
  const unheld = new Map<string, number>();
  /** Caught up and still subscribed. Each connection and each loss of it starts a new generation. */
  let listening = false;
  let generation = 0;
  const subscriber = connection.duplicate();
  logErrors(subscriber, logger, 'cancel notices');
  const notice = (jobId: string) => {
    // Remembered even when held: a job stopped for another reason and run again here must not start.
    worker.cancelJob(jobId, RUN_CANCELLED);
    const now = Date.now();
    unheld.delete(jobId); // re-inserted last: the map stays in notice order
    unheld.set(jobId, now);
    for (const [id, at] of unheld) {
      if (now - at < CANCEL_NOTICE_WINDOW_MS) break;
      unheld.delete(id);
    }
  };
  subscriber.on('message', (_channel: string, jobId: string) => notice(jobId));
  // 'ready' comes on every (re)connection. Subscribed first, then the log read: a notice is in the log
  // (written before it is published) or heard, or both (hearing one twice is harmless).
  const readLog = async () => {
    for (const jobId of await connection.zrange(cancelNoticesKey(prefix), 0, -1)) notice(jobId);
  };
  const catchUp = async () => {
    const current = ++generation;
    await subscriber.subscribe(cancelChannel(prefix));
    await readLog();
    if (current === generation) listening = true;
  };
  subscriber.on('ready', () => void catchUp().catch((err: unknown) => logger.warn({ err }, 'cannot listen for cancel notices')));
  subscriber.on('close', () => {
    generation++;
    listening = false;
  });
  // The log is read again every LOG_REREAD_MS: a connection that died without a word (no FIN: the
  // subscriber only reads, so nothing notices for as long as TCP keepalive takes) still hears notices.
  const reread = setInterval(() => void readLog().catch(() => undefined), LOG_REREAD_MS);
  reread.unref();
  worker.on('closed', () => {
    clearInterval(reread);
    subscriber.disconnect();
  });
  return { noticed: (jobId) => unheld.delete(jobId), listening: () => listening };
}

function describe(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/**
 * The one worker wrapper every stage service uses: parse the StageJob, run the handler, and complete
 * the job with the StageResult as its return value. BullMQ stores it in the same script that completes
 * the job and appends it to the queue's event stream, where the orchestrator reads it (ADR 0006): the
 * result and the job's completion are one atomic step. A PermanentJobError becomes a FAILED result;
 * any other error is retried by BullMQ and becomes a FAILED result on the last attempt.
 */
export function createStageWorker<T extends StageJob['type']>(opts: StageWorkerOptions<T>): Worker {
  const now = opts.now ?? (() => new Date());
  const processor = async (bull: Job, token?: string, signal?: AbortSignal): Promise<StageResult> => {
    const parsed = StageJob.safeParse(bull.data);
    if (!parsed.success || parsed.data.type !== opts.type) {
      opts.logger.error({ jobId: bull.id, issues: parsed.success ? 'wrong type' : parsed.error.issues }, 'rejected malformed stage job');
      throw new UnrecoverableError(`malformed ${opts.type} job ${bull.id}`);
    }
    const job = parsed.data as StageJobOf<T>;
    // The handler's logger is made when first used: a child logger serializes its bindings.
    let child: Logger | undefined;
    const jobLogger = (): Logger => (child ??= opts.logger.child({ runId: job.runId, stage: job.stage, attempt: job.attempt }));
    const startedAt = now().toISOString();
    const finish = (outcome: StageOutcome): StageResult => {
      const checked = checkOutcome(opts.type, outcome);
      if (checked.problem) jobLogger().error({ problem: checked.problem }, 'stage handler returned an invalid result');
      const result = stageResultOf(job, {
        status: checked.status,
        startedAt,
        finishedAt: now().toISOString(),
        ...(checked.message ? { message: checked.message.slice(0, 4000) } : {}),
        output: checked.output,
      });
      opts.logger.info({ runId: job.runId, stage: job.stage, attempt: job.attempt, status: result.status }, 'stage job finished');
      return result;
    };
    // The durable mark is asked (one read) when notices may have been missed: for a job delivered again
    // (its worker died, or it is retried), cancelled perhaps long ago; for a job that waited in its queue
    // for minutes (its cancel may be older than the notices remembered); and for any job while this
    // worker is not listening (starting, or its connection lost) or has not yet read the recent notices.
    const unsure = (bull.attemptsStarted ?? 1) > 1 || Date.now() - bull.timestamp > OLD_JOB_MS || !cancels.listening();
    if (cancels.noticed(job.jobId) || (unsure && (await opts.connection.exists(cancelledJobKey(opts.prefix, job.jobId))) === 1)) {
      opts.logger.info({ runId: job.runId, stage: job.stage, attempt: job.attempt }, 'stage job not started: its run was cancelled');
      return finish({ status: 'FAILED', message: 'not started: the run was cancelled' });
    }
    opts.logger.info({ runId: job.runId, stage: job.stage, attempt: job.attempt, deliveries: bull.attemptsStarted }, 'stage job started');
    const ctx: StageContext = {
      get logger() {
        return jobLogger();
      },
      signal: signal ?? new AbortController().signal,
      deliveries: Math.max(0, (bull.attemptsStarted ?? 1) - 1),
      ...(bull.attemptsMade > 0 && bull.failedReason ? { previousError: bull.failedReason } : {}),
    };
    let outcome: StageOutcome;
    let stoppedEarly = false;
    try {
      outcome = await opts.handler(job, ctx);
    } catch (err) {
      stoppedEarly = true;
      if (err instanceof PermanentJobError) outcome = { status: 'FAILED', message: err.message };
      else {
        const lastAttempt = bull.attemptsMade + 1 >= (bull.opts.attempts ?? 1);
        jobLogger().warn({ err, lastAttempt }, 'stage job errored');
        if (!lastAttempt && !ctx.signal.aborted) throw err;
        outcome = { status: 'FAILED', message: `stage errored: ${describe(err)}` };
      }
    }
    if (ctx.signal.aborted) {
      // The run was cancelled: the job ends here, once (its result is no news to the orchestrator). A
      // handler that finished anyway (the notice came too late to stop it) reports what it did.
      if (ctx.signal.reason === RUN_CANCELLED) return finish(stoppedEarly || outcome.status === 'FAILED' ? { status: 'FAILED', message: 'stopped: the run was cancelled' } : outcome);
      // Cancelled by our own shutdown: hand the job back untouched, without spending an attempt.
      if (ctx.signal.reason === SHUTTING_DOWN && token) {
        await bull.moveToWait(token);
        throw new WaitingError();
      }
      // A job whose lock was lost belongs to another worker now: its verdict, not ours, is the result.
      // (Were this worker to complete it anyway, BullMQ would refuse: the lock's token is no longer ours.)
      throw new Error(`stage job ${job.jobId} was taken from this worker (${String(ctx.signal.reason ?? 'aborted')}); not completing it`);
    }
    return finish(outcome);
  };
  const worker = new Worker(opts.queueName, processor, {
    connection: opts.connection as unknown as ConnectionOptions,
    prefix: opts.prefix,
    concurrency: opts.concurrency,
    lockDuration: opts.lockDuration,
    stalledInterval: opts.stalledInterval,
    maxStalledCount: MAX_STALLED_REDELIVERIES,
    autorun: opts.autorun ?? true,
  });
  const cancels = listenForCancels(worker, opts.connection, opts.prefix, opts.logger);
  // A worker that cannot renew a lock no longer owns the job: stop working on it, another worker will.
  worker.on('lockRenewalFailed', (ids: string[]) => ids.forEach((id) => worker.cancelJob(id, 'lock lost')));
  // While Redis is away BullMQ reports every retry: one line per 10 s is enough.
  logErrors(worker, opts.logger, `${opts.type} worker`);
  return worker;
}
