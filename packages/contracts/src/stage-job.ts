import { z } from 'zod';
import { ArtifactRef, JobId, PipelineName, RunId, StageName } from './common.js';
import { DeployTarget, EnvVariables, VerifySettings } from './pipeline.js';
import { Trigger } from './trigger.js';

const Base = {
  v: z.literal(1),
  jobId: JobId,
  runId: RunId,
  runNumber: z.number().int().positive(),
  pipeline: PipelineName,
  /** A StageName; the first stage is always `Source`. */
  stage: StageName,
  stageIndex: z.number().int().nonnegative(),
  attempt: z.number().int().positive(),
  trigger: Trigger,
};

/** Enqueued by the orchestrator on queue `source`: resolve the commit and snapshot it. */
export const SourceJob = z.object({ ...Base, type: z.literal('source'), repository: z.string() }).strict();

const BuildLike = {
  ...Base,
  /** The resolved commit being built. */
  commit: z.string(),
  repository: z.string(),
  input: ArtifactRef,
  buildspec: z.string(),
  env: z.object({ variables: EnvVariables }),
  timeoutMinutes: z.number().int().positive(),
};
/** Enqueued on queue `build`: run the buildspec's phases on the source artifact, store artifacts.files. */
export const BuildJob = z.object({ ...BuildLike, type: z.literal('build') }).strict();
/** Enqueued on queue `test`: run the test buildspec on the build artifact and read its reports. */
export const TestJob = z
  .object({
    ...BuildLike,
    type: z.literal('test'),
    /**
     * Store the buildspec's `artifacts` (kept for download). Set by a control plane that never gives a
     * test stage's artifact to a later stage; a job without it (from an older one, which would) stores none.
     */
    storeArtifacts: z.literal(true).optional(),
  })
  .strict();
/** Enqueued on queue `deploy`: deploy the artifact to the target. */
export const DeployJob = z.object({ ...Base, type: z.literal('deploy'), commit: z.string(), input: ArtifactRef, target: DeployTarget }).strict();
/** Enqueued on queue `monitor`: probe what the deploy stage deployed. */
export const MonitorJob = z.object({ ...Base, type: z.literal('monitor'), url: z.url({ protocol: /^https?$/ }), verify: VerifySettings }).strict();

export const StageJob = z.discriminatedUnion('type', [SourceJob, BuildJob, TestJob, DeployJob, MonitorJob]);
export type StageJob = z.infer<typeof StageJob>;
export type SourceJob = z.infer<typeof SourceJob>;
export type BuildJob = z.infer<typeof BuildJob>;
export type TestJob = z.infer<typeof TestJob>;
export type DeployJob = z.infer<typeof DeployJob>;
export type MonitorJob = z.infer<typeof MonitorJob>;
export type StageJobOf<T extends StageJob['type']> = Extract<StageJob, { type: T }>;
