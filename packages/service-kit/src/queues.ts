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
 * Kept longer than BullMQ's default 10,000 events so an orchestrator that is away for a while finds
 * every outcome still there; whatever is trimmed anyway, the reconciler settles from the job itself.
 */
export function stageEventsKey(prefix: string, queueName: string): string {
  return `${prefix}:${queueName}:events`;
}
export const STAGE_EVENTS_MAXLEN = 100_000;

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
