import { Queue, type ConnectionOptions, type JobsOptions } from 'bullmq';
import type { Redis } from 'ioredis';

/** Bounded retention: BullMQ keeps job data in clear text and forever unless told otherwise. */
export const DEFAULT_JOB_OPTIONS: JobsOptions = {
  attempts: 3,
  backoff: { type: 'exponential', delay: 1000 },
  removeOnComplete: { age: 7 * 24 * 3600, count: 10_000 },
  removeOnFail: { age: 30 * 24 * 3600, count: 10_000 },
};

/**
 * BullMQ's event stream of a queue, where the orchestrator reads each stage job's outcome (ADR 0006).
 * BullMQ trims it to about `STAGE_EVENTS_MAXLEN` entries (~4 per job: added, waiting, active,
 * completed), i.e. ~5,000 jobs: fewer than the 10,000 completed jobs kept with their return values,
 * so an outcome trimmed before the orchestrator read it is still in its job for the reconciler.
 */
export function stageEventsKey(prefix: string, queueName: string): string {
  return `${prefix}:${queueName}:events`;
}
export const STAGE_EVENTS_MAXLEN = 20_000;

/**
 * BullMQ keeps the trim length in the queue's meta hash, written when a Queue object is made (and
 * reset to its default of 10,000 by any Queue made without the option, or when the hash is lost).
 * The orchestrator re-asserts it while it runs.
 */
export async function keepStageEvents(redis: Redis, prefix: string, queueName: string): Promise<void> {
  await redis.hset(`${prefix}:${queueName}:meta`, 'opts.maxLenEvents', STAGE_EVENTS_MAXLEN);
}

export interface QueueConfig {
  connection: Redis;
  prefix: string;
}

export function createQueue(name: string, cfg: QueueConfig): Queue {
  return new Queue(name, {
    connection: cfg.connection as unknown as ConnectionOptions,
    prefix: cfg.prefix,
    defaultJobOptions: DEFAULT_JOB_OPTIONS,
    streams: { events: { maxLen: STAGE_EVENTS_MAXLEN } },
  });
}
