import { CANCEL_NOTICE_WINDOW_MS, CANCELLED_MARK_TTL_SECONDS, cancelChannel, cancelledJobKey, cancelNoticesKey, queueFor, type StageJob } from '@conveyor/contracts';
import type { Queue } from 'bullmq';
import type { Redis } from 'ioredis';
import type { CancelledJob, JobDispatcher } from '../ports.js';

/** Stage jobs on BullMQ queues, one per stage type, with the deterministic job id as BullMQ id. */
export class BullJobDispatcher implements JobDispatcher {
  constructor(
    private readonly queues: ReadonlyMap<string, Queue>,
    /** For the cancel marks and notices: a connection and the queues' prefix. */
    private readonly control: { redis: Redis; prefix: string },
  ) {}

  private queue(job: Pick<StageJob, 'type'>): Queue {
    const q = this.queues.get(queueFor(job.type));
    if (!q) throw new Error(`no queue for stage type ${job.type}`);
    return q;
  }

  async ensure(jobs: readonly StageJob[]): Promise<void> {
    // BullMQ ignores an add whose job id it already holds. Plain adds issued together share a round trip
    // on the auto-pipelined queue connection; addBulk would wrap them in a MULTI. Jobs are not parsed
    // here: the state machine builds them typed (its tests parse every one), and a job that still does
    // not fit (say, a deployed URL that is no URL) is refused by its worker, failing its stage, where
    // an error here would leave the run waiting for a job that never comes.
    await Promise.all(jobs.map((job) => this.queue(job).add(job.type, job, { jobId: job.jobId })));
  }

  async inspect(job: StageJob): Promise<{ state: 'pending' | 'completed' | 'failed' | 'missing'; reason?: string; result?: unknown }> {
    // A completed job keeps its return value (the StageResult) for DEFAULT_JOB_OPTIONS.removeOnComplete.
    const found = await this.queue(job).getJob(job.jobId);
    if (!found) return { state: 'missing' };
    const state = await found.getState();
    if (state === 'completed') return { state: 'completed', result: found.returnvalue };
    if (state === 'failed') return { state: 'failed', reason: found.failedReason || 'job failed' };
    return { state: 'pending' };
  }

  async cancel(jobs: readonly CancelledJob[]): Promise<void> {
    if (jobs.length === 0) return;
    const { redis, prefix } = this.control;
    // Mark and log first: a worker that takes the job, or starts listening, after this can see it is cancelled.
    const marks = redis.pipeline();
    const now = Date.now();
    const log = cancelNoticesKey(prefix);
    for (const { jobId } of jobs) marks.set(cancelledJobKey(prefix, jobId), '1', 'EX', CANCELLED_MARK_TTL_SECONDS).zadd(log, now, jobId);
    marks.zremrangebyscore(log, '-inf', now - CANCEL_NOTICE_WINDOW_MS).pexpire(log, CANCEL_NOTICE_WINDOW_MS);
    for (const [err] of (await marks.exec()) ?? []) if (err) throw err;
    await Promise.all(
      jobs.map(async (job) => {
        // Removed if waiting; a job a worker holds is locked and stays (the notice below stops it).
        await this.queue(job)
          .remove(job.jobId)
          .catch(() => 0);
        await redis.publish(cancelChannel(prefix), job.jobId);
      }),
    );
  }
}
