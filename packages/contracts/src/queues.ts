import { z } from 'zod';
import { parseJsonAs, RunId } from './common.js';
import type { StageJob } from './stage-job.js';

/** Queue names; the BullMQ prefix (default `conveyor`) is deployment config. */
export const QUEUES = {
  source: 'source',
  build: 'build',
  test: 'test',
  deploy: 'deploy',
  monitor: 'monitor',
} as const;

/**
 * The queue a stage job goes to. A job's outcome is its BullMQ return value, a StageResult (v1), which
 * the orchestrator reads from the queue's event stream; a stage worker publishes nothing else (ADR 0006).
 */
export function queueFor(type: StageJob['type']): string {
  return QUEUES[type];
}

/** Redis stream carrying RunEvents. */
export const EVENTS_STREAM = 'events';

/**
 * Cancelling a run (ADR 0007): the orchestrator publishes, on this channel, the job id of each stage job
 * it cancelled; the stage worker holding that job aborts it.
 */
export function cancelChannel(prefix: string): string {
  return `${prefix}:cancel`;
}

/**
 * The version of a pipeline that serves now, as its deployer last put it live: `{ runId, attempt, url }`
 * (JSON), written before the versions it replaces are stopped. A monitor stage whose probes start failing
 * reads it to tell a version replaced by a later deploy from one that broke.
 */
export function liveDeploymentKey(prefix: string, pipeline: string): string {
  return `${prefix}:deployment:live:${pipeline}`;
}

/** The value under liveDeploymentKey. */
export const LiveDeployment = z.object({ runId: RunId, attempt: z.number().int().positive(), url: z.string() });
export type LiveDeployment = z.infer<typeof LiveDeployment>;

/** The value read from Redis, if it is one (nothing stored, or anything else, is none). */
export function parseLiveDeployment(text: string | null): LiveDeployment | undefined {
  return parseJsonAs(LiveDeployment, text);
}

/** A durable mark of a cancelled stage job, for the checks a stage makes before a step it cannot take back. */
export function cancelledJobKey(prefix: string, jobId: string): string {
  return `${prefix}:cancelled:${jobId}`;
}

export const CANCELLED_MARK_TTL_SECONDS = 7 * 24 * 3600;

/**
 * The recent cancel notices, a sorted set of job ids scored by when they were sent, kept for
 * `CANCEL_NOTICE_WINDOW_MS`: a stage worker that starts listening (at start-up, or again after a lost
 * connection) reads it, so a notice published while it was not listening still reaches it.
 */
export function cancelNoticesKey(prefix: string): string {
  return `${prefix}:cancel-notices`;
}

export const CANCEL_NOTICE_WINDOW_MS = 10 * 60_000;
