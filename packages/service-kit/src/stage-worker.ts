import { UnrecoverableError, WaitingError, Worker, type ConnectionOptions, type Job } from 'bullmq';
import { StageJob, StageResult, type StageJobOf, type StageOutput } from '@conveyor/contracts';
import type { Redis } from 'ioredis';
import { PermanentJobError } from './errors.js';
import type { ResultPublisher } from './results-stream.js';
import { logErrors, SHUTTING_DOWN } from './lifecycle.js';
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
}

export type StageHandler<T extends StageJob['type']> = (job: StageJobOf<T>, ctx: StageContext) => Promise<StageOutcome>;

export interface StageWorkerOptions<T extends StageJob['type']> {
  type: T;
  queueName: string;
  connection: Redis;
  prefix: string;
  results: ResultPublisher;
  handler: StageHandler<T>;
  logger: Logger;
  concurrency: number;
  lockDuration: number;
  stalledInterval: number;
  now?: () => Date;
  /** false: call worker.run() yourself once start-up work is done. Default true. */
  autorun?: boolean;
}

/** The work is done: a Redis blip while publishing must not make BullMQ run the whole job again. */
async function publishWithRetry(results: ResultPublisher, result: StageResult): Promise<void> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await results.publish(result);
    } catch (err) {
      if (attempt >= 5) throw err;
      await new Promise((r) => setTimeout(r, 200 * 2 ** attempt));
    }
  }
}

function describe(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/**
 * The one worker wrapper every stage service uses: parse the StageJob, run the handler, publish the
 * StageResult on the results queue. A PermanentJobError becomes a FAILED result; any other error is
 * retried by BullMQ and becomes a FAILED result on the last attempt.
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
    const logger = opts.logger.child({ runId: job.runId, stage: job.stage, attempt: job.attempt });
    const startedAt = now().toISOString();
    const finish = async (outcome: StageOutcome): Promise<StageResult> => {
      const result: StageResult = {
        v: 1,
        jobId: job.jobId,
        runId: job.runId,
        stage: job.stage,
        stageIndex: job.stageIndex,
        attempt: job.attempt,
        status: outcome.status,
        startedAt,
        finishedAt: now().toISOString(),
        ...(outcome.message ? { message: outcome.message.slice(0, 4000) } : {}),
        output: outcome.output ?? {},
      };
      await publishWithRetry(opts.results, result);
      logger.info({ status: result.status }, 'stage job finished');
      return result;
    };
    logger.info({ deliveries: bull.attemptsStarted }, 'stage job started');
    const ctx: StageContext = { logger, signal: signal ?? new AbortController().signal, deliveries: Math.max(0, (bull.attemptsStarted ?? 1) - 1) };
    let outcome: StageOutcome;
    try {
      outcome = await opts.handler(job, ctx);
    } catch (err) {
      if (err instanceof PermanentJobError) outcome = { status: 'FAILED', message: err.message };
      else {
        const lastAttempt = bull.attemptsMade + 1 >= (bull.opts.attempts ?? 1);
        logger.warn({ err, lastAttempt }, 'stage job errored');
        if (!lastAttempt && !ctx.signal.aborted) throw err;
        outcome = { status: 'FAILED', message: `stage errored: ${describe(err)}` };
      }
    }
    if (ctx.signal.aborted) {
      // Cancelled by our own shutdown: hand the job back untouched, without spending an attempt.
      if (ctx.signal.reason === SHUTTING_DOWN && token) {
        await bull.moveToWait(token);
        throw new WaitingError();
      }
      // A job whose lock was lost belongs to another worker now: its verdict, not ours, is the result.
      throw new Error(`stage job ${job.jobId} was taken from this worker (${String(ctx.signal.reason ?? 'aborted')}); not publishing`);
    }
    return finish(outcome);
  };
  const worker = new Worker(opts.queueName, processor, {
    connection: opts.connection as unknown as ConnectionOptions,
    prefix: opts.prefix,
    concurrency: opts.concurrency,
    lockDuration: opts.lockDuration,
    stalledInterval: opts.stalledInterval,
    maxStalledCount: 2,
    autorun: opts.autorun ?? true,
  });
  // A worker that cannot renew a lock no longer owns the job: stop working on it, another worker will.
  worker.on('lockRenewalFailed', (ids: string[]) => ids.forEach((id) => worker.cancelJob(id, 'lock lost')));
  // While Redis is away BullMQ reports every retry: one line per 10 s is enough.
  logErrors(worker, opts.logger, `${opts.type} worker`);
  return worker;
}
