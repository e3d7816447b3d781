import { Queue } from 'bullmq';
import { Redis } from 'ioredis';
import { StageResult, type StageJob } from '@conveyor/contracts';
import { composeStageService, createQueue, stageEventsKey, type StageServiceOptions } from '@conveyor/service-kit';

/** Every StageResult a queue's jobs completed with, oldest first (read from the queue's event stream). */
export async function completedResults(redis: Redis, prefix: string, queue: string): Promise<StageResult[]> {
  const entries = await redis.xrange(stageEventsKey(prefix, queue), '-', '+');
  return entries.flatMap(([, fields]) => {
    const at = (name: string) => {
      for (let i = 0; i + 1 < fields.length; i += 2) if (fields[i] === name) return fields[i + 1];
      return undefined;
    };
    const value = at('returnvalue');
    return at('event') === 'completed' && value !== undefined ? [StageResult.parse(JSON.parse(value))] : [];
  });
}

/**
 * Drives a stage worker the way the orchestrator does: add a StageJob to its BullMQ queue, then
 * wait for the StageResult the job completes with.
 */
export class StageHarness {
  private readonly redis: Redis;
  private readonly queues = new Map<string, Queue>();

  constructor(
    url: string,
    private readonly prefix: string,
  ) {
    this.redis = new Redis(url, { maxRetriesPerRequest: null });
  }

  async enqueue(queue: string, job: { jobId: string } & Record<string, unknown>): Promise<void> {
    let q = this.queues.get(queue);
    if (!q) {
      q = createQueue(queue, { connection: this.redis, prefix: this.prefix });
      this.queues.set(queue, q);
    }
    await q.add(String(job.type ?? queue), job, { jobId: job.jobId, attempts: 2 });
  }

  /** The StageResult the job `jobId` completed with, once it has. */
  async result(jobId: string, timeoutMs = 60_000): Promise<StageResult> {
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      for (const queue of this.queues.keys()) {
        const found = (await completedResults(this.redis, this.prefix, queue)).find((r) => r.jobId === jobId);
        if (found) return found;
      }
      await new Promise((r) => setTimeout(r, 100));
    }
    throw new Error(`no result for ${jobId} within ${timeoutMs} ms`);
  }

  async log(jobId: string): Promise<string> {
    return (await this.redis.get(`${this.prefix}:log:${jobId}`)) ?? '';
  }

  async close(): Promise<void> {
    await Promise.all([...this.queues.values()].map((q) => q.close()));
    this.redis.disconnect();
  }
}

/** A stage service composed in this process (real worker, real Redis) with a harness to drive it. */
export function inProcessStageService<T extends StageJob['type']>(opts: StageServiceOptions<T>) {
  const service = composeStageService(opts);
  void service.start().then(() => service.worker.run());
  const harness = new StageHarness(opts.env.REDIS_URL, opts.env.QUEUE_PREFIX);
  return {
    harness,
    async stop() {
      for (const step of service.shutdown) await step.run();
      await harness.close();
    },
  };
}
