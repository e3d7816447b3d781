import type { StageJob } from './stage-job.js';

/** Queue names; the BullMQ prefix (default `conveyor`) is deployment config. */
export const QUEUES = {
  source: 'source',
  build: 'build',
  test: 'test',
  deploy: 'deploy',
  monitor: 'monitor',
} as const;

/** Redis stream (consumer group `orchestrator`) on which workers publish StageResults. */
export const RESULTS_STREAM = 'results';

export function queueFor(type: StageJob['type']): string {
  return QUEUES[type];
}

/** Redis stream carrying RunEvents. */
export const EVENTS_STREAM = 'events';
