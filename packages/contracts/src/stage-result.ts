import { z } from 'zod';
import { ArtifactRef, IsoTime, JobId, RunId } from './common.js';

export const TestCounts = z
  .object({
    total: z.number().int().nonnegative(),
    passed: z.number().int().nonnegative(),
    failed: z.number().int().nonnegative(),
    skipped: z.number().int().nonnegative(),
  })
  .strict();
export type TestCounts = z.infer<typeof TestCounts>;

export const PhaseOutcome = z.object({
  name: z.string(),
  status: z.enum(['SUCCEEDED', 'FAILED', 'SKIPPED']),
  durationMs: z.number().nonnegative(),
  message: z.string().optional(),
});
export type PhaseOutcome = z.infer<typeof PhaseOutcome>;

export const FailedTestCase = z.object({ suite: z.string(), name: z.string(), message: z.string().optional() });

/** What a stage produced; each stage type fills the fields that concern it. */
export const StageOutput = z
  .object({
    commit: z.string().optional(),
    artifact: ArtifactRef.optional(),
    phases: z.array(PhaseOutcome).optional(),
    tests: TestCounts.optional(),
    failedTests: z.array(FailedTestCase).max(100).optional(),
    url: z.string().optional(),
    probes: z
      .object({ total: z.number().int(), failed: z.number().int(), p50Ms: z.number(), p95Ms: z.number() })
      .optional(),
    exportedVariables: z.record(z.string(), z.string()).optional(),
    /** Monitor: the verification ended early because another run's deploy replaced the version it watched. */
    supersededBy: z.object({ runId: RunId, url: z.string() }).optional(),
  })
  .strict();
export type StageOutput = z.infer<typeof StageOutput>;

/** What a stage job completes with, successfully or not: its BullMQ return value (ADR 0006). */
export const StageResult = z
  .object({
    v: z.literal(1),
    jobId: JobId,
    runId: RunId,
    stage: z.string(),
    stageIndex: z.number().int().nonnegative(),
    attempt: z.number().int().positive(),
    status: z.enum(['SUCCEEDED', 'FAILED']),
    startedAt: IsoTime,
    finishedAt: IsoTime,
    message: z.string().max(4000).optional(),
    output: StageOutput.default({}),
  })
  .strict();
export type StageResult = z.infer<typeof StageResult>;

/** The outcome fields a stage decides; the identity fields come from the job (see `stageResultOf`). */
export type StageOutcomeFields = Pick<StageResult, 'status' | 'startedAt' | 'finishedAt' | 'message'> & { output?: StageOutput };

/** The result of `job`: it echoes the job's identity, so the orchestrator can match it to its stage. */
export function stageResultOf(
  job: { jobId: string; runId: string; stage: string; stageIndex: number; attempt: number },
  outcome: StageOutcomeFields,
): StageResult {
  return {
    v: 1,
    jobId: job.jobId,
    runId: job.runId,
    stage: job.stage,
    stageIndex: job.stageIndex,
    attempt: job.attempt,
    status: outcome.status,
    startedAt: outcome.startedAt,
    finishedAt: outcome.finishedAt,
    ...(outcome.message ? { message: outcome.message } : {}),
    output: outcome.output ?? {},
  };
}
