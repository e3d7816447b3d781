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

/** Each result is also kept under its job id for 7 days: the reconciler's proof that a job already ran. */
export function resultKey(prefix: string, jobId: string): string {
  return `${prefix}:result:${jobId}`;
}
const RESULT_TTL_SECONDS = 7 * 24 * 3600;

export interface ResultPublisher {
  publish(result: StageResult): Promise<void>;
}

export function createResultPublisher(redis: Redis, prefix: string): ResultPublisher {
  const key = resultsStreamKey(prefix);
  return {
    async publish(result) {
      // Parse on publish: a worker never sends a result the orchestrator would refuse.
      const json = JSON.stringify(StageResult.parse(result));
      const replies = await redis.multi().set(resultKey(prefix, result.jobId), json, 'EX', RESULT_TTL_SECONDS).xadd(key, '*', 'result', json).exec();
      const failed = replies?.find(([err]) => err);
      if (!replies || failed) throw failed?.[0] ?? new Error('result not published');
    },
  };
}
