import { StageJob, queueFor } from '@conveyor/contracts';
import type { Queue } from 'bullmq';
import { resultKey, type Redis } from '@conveyor/service-kit';
import type { JobDispatcher } from '../ports.js';

/** Stage jobs on BullMQ queues, one per stage type, with the deterministic job id as BullMQ id. */
export class BullJobDispatcher implements JobDispatcher {
  constructor(
    private readonly queues: ReadonlyMap<string, Queue>,
    private readonly redis: Redis,
    private readonly prefix: string,
  ) {}

  private queue(job: StageJob): Queue {
    const q = this.queues.get(queueFor(job.type));
    if (!q) throw new Error(`no queue for stage type ${job.type}`);
    return q;
  }

  async ensure(jobs: readonly StageJob[]): Promise<void> {
    // Parse on publish; BullMQ ignores an add whose job id it already holds. One addBulk per queue.
    const byQueue = new Map<Queue, StageJob[]>();
    for (const job of jobs) byQueue.set(this.queue(job), [...(byQueue.get(this.queue(job)) ?? []), StageJob.parse(job)]);
    await Promise.all([...byQueue].map(([queue, list]) => queue.addBulk(list.map((job) => ({ name: job.type, data: job, opts: { jobId: job.jobId } })))));
  }

  async inspect(job: StageJob): Promise<{ state: 'pending' | 'completed' | 'failed' | 'missing'; reason?: string; result?: unknown }> {
    // The result a worker kept under the job id outlives the BullMQ job (removed after completion).
    const stored = await this.redis.get(resultKey(this.prefix, job.jobId));
    if (stored) return { state: 'completed', result: JSON.parse(stored) };
    const found = await this.queue(job).getJob(job.jobId);
    if (!found) return { state: 'missing' };
    const state = await found.getState();
    if (state === 'completed') return { state: 'completed', result: found.returnvalue };
    if (state === 'failed') return { state: 'failed', reason: found.failedReason || 'job failed' };
    return { state: 'pending' };
  }
}
