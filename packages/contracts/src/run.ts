import { z } from 'zod';
import { IsoTime, PipelineName, RunId, StageType } from './common.js';
import { StageDefinition, SourceConfig } from './pipeline.js';
import { StageOutput } from './stage-result.js';
import { Trigger } from './trigger.js';

export const RunStatus = z.enum(['QUEUED', 'RUNNING', 'SUCCEEDED', 'FAILED', 'CANCELLED']);
export type RunStatus = z.infer<typeof RunStatus>;
export const StageStatus = z.enum(['PENDING', 'RUNNING', 'SUCCEEDED', 'FAILED', 'SKIPPED', 'CANCELLED']);
export type StageStatus = z.infer<typeof StageStatus>;

export const TERMINAL_RUN_STATUSES: readonly RunStatus[] = ['SUCCEEDED', 'FAILED', 'CANCELLED'];
/** A run in one of these states never changes again. */
export const isTerminalRun = (run: { status: RunStatus }): boolean => TERMINAL_RUN_STATUSES.includes(run.status);

export const StageRecord = z.object({
  name: z.string(),
  type: StageType,
  status: StageStatus,
  attempt: z.number().int().nonnegative(),
  jobId: z.string().optional(),
  startedAt: IsoTime.optional(),
  finishedAt: IsoTime.optional(),
  message: z.string().optional(),
  result: StageOutput.optional(),
});
export type StageRecord = z.infer<typeof StageRecord>;

/** What a run needs of its pipeline, frozen at creation (a later change to the pipeline does not alter it). */
export const RunPlan = z.object({
  source: SourceConfig.omit({ webhookSecret: true, triggers: true }),
  stages: z.array(StageDefinition),
});
export type RunPlan = z.infer<typeof RunPlan>;

/** The run record: the truth about a run, owned by the orchestrator, stored in Redis. */
export const Run = z.object({
  v: z.literal(1),
  id: RunId,
  number: z.number().int().positive(),
  pipeline: PipelineName,
  status: RunStatus,
  trigger: Trigger,
  commit: z.string().optional(),
  createdAt: IsoTime,
  startedAt: IsoTime.optional(),
  finishedAt: IsoTime.optional(),
  message: z.string().optional(),
  /** The pipeline-level variables of this run (`#{variables.NAME}`): given at start, else declared defaults. Absent: none. */
  variables: z.record(z.string(), z.string()).optional(),
  /** A stop that waits: the running stage finishes, then the run ends CANCELLED before the next one. */
  stopRequested: z.object({ reason: z.string(), at: IsoTime }).optional(),
  stages: z.array(StageRecord).min(1),
  plan: RunPlan,
  /** Optimistic-concurrency version, bumped by every stored transition. */
  version: z.number().int().nonnegative(),
});
export type Run = z.infer<typeof Run>;

/** The run as the API shows it. */
export type RunView = Omit<Run, 'plan' | 'version' | 'v'>;
export function toRunView(run: Run): RunView {
  const { plan: _p, version: _v, v: _vv, ...view } = run;
  return view;
}
