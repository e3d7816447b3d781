import { Queue, type ConnectionOptions, type JobsOptions } from 'bullmq';
import type { Redis } from 'ioredis';

/** Bounded retention: BullMQ keeps job data in clear text and forever unless told otherwise. */
export const DEFAULT_JOB_OPTIONS: JobsOptions = {
  attempts: 3,
  backoff: { type: 'exponential', delay: 1000 },
  removeOnComplete: { age: 7 * 24 * 3600, count: 10_000 },
  removeOnFail: { age: 30 * 24 * 3600, count: 10_000 },
};

export interface QueueConfig {
  connection: Redis;
  prefix: string;
}

export function createQueue(name: string, cfg: QueueConfig): Queue {
  return new Queue(name, {
    connection: cfg.connection as unknown as ConnectionOptions,
    prefix: cfg.prefix,
    defaultJobOptions: DEFAULT_JOB_OPTIONS,
  });
}
