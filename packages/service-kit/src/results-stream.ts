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

/** Keep the result under its job id and append it to the stream, in one atomic step. */
const PUBLISH = `
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return redis.call('XADD', KEYS[2], '*', 'result', ARGV[1])
`;

export function createResultPublisher(redis: Redis, prefix: string): ResultPublisher {
  const key = resultsStreamKey(prefix);
  if (!('conveyorPublishResult' in redis)) redis.defineCommand('conveyorPublishResult', { numberOfKeys: 2, lua: PUBLISH });
  const publish = (redis as unknown as { conveyorPublishResult: (...args: (string | number)[]) => Promise<string> }).conveyorPublishResult.bind(redis);
  return {
    async publish(result) {
      // Parse on publish: a worker never sends a result the orchestrator would refuse.
      const json = JSON.stringify(StageResult.parse(result));
      await publish(resultKey(prefix, result.jobId), key, json, RESULT_TTL_SECONDS);
    },
  };
}
