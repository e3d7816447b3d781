import { RESULTS_STREAM, StageResult } from '@conveyor/contracts';
import type { Redis } from 'ioredis';

/**
 * StageResults travel back to the orchestrator on a Redis stream read by a consumer group: one XADD
 * per result (no job bookkeeping), durable until acknowledged, claimable when a reader dies.
 * A stage job's BullMQ return value holds the same result, which the orchestrator's reconciler reads
 * if a stream entry is ever lost.
 */
export function resultsStreamKey(prefix: string): string {
  return `${prefix}:${RESULTS_STREAM}`;
}

export interface ResultPublisher {
  publish(result: StageResult): Promise<void>;
}

export function createResultPublisher(redis: Redis, prefix: string): ResultPublisher {
  const key = resultsStreamKey(prefix);
  return {
    async publish(result) {
      // Parse on publish: a worker never sends a result the orchestrator would refuse.
      await redis.xadd(key, '*', 'result', JSON.stringify(StageResult.parse(result)));
    },
  };
}
