import { Queue } from 'bullmq';
import { Redis } from 'ioredis';
import type { StageJob } from '@conveyor/contracts';
import { composeStageService, type StageServiceOptions } from '@conveyor/service-kit';

/**
 * Drives a stage worker the way the orchestrator does: add a StageJob to its BullMQ queue, then
 * wait for the StageResult on the results stream.
 */
export class StageHarness {
  private readonly redis: Redis;
  private readonly queues = new Map<string, Queue>();
  private lastId = '0-0';

  constructor(
    url: string,
    private readonly prefix: string,
  ) {
    this.redis = new Redis(url, { maxRetriesPerRequest: null });
  }

  async enqueue(queue: string, job: { jobId: string } & Record<string, unknown>): Promise<void> {
    let q = this.queues.get(queue);
    if (!q) {
      q = new Queue(queue, { connection: this.redis, prefix: this.prefix });
      this.queues.set(queue, q);
    }
    await q.add(String(job.type ?? queue), job, { jobId: job.jobId, attempts: 2 });
  }

  /** The next StageResult published for `jobId` (read in stream order). */
  async result(jobId: string, timeoutMs = 60_000): Promise<any> {
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      const reply = (await this.redis.xread('COUNT', 100, 'BLOCK', 500, 'STREAMS', `${this.prefix}:results`, this.lastId)) as [string, [string, string[]][]][] | null;
      for (const [id, fields] of reply?.[0]?.[1] ?? []) {
        this.lastId = id;
        const result = JSON.parse(fields[1]!);
        if (result.jobId === jobId) return result;
      }
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
  void service.worker.run();
  const harness = new StageHarness(opts.env.REDIS_URL, opts.env.QUEUE_PREFIX);
  return {
    harness,
    async stop() {
      for (const step of service.shutdown) await step.run();
      await harness.close();
    },
  };
}
