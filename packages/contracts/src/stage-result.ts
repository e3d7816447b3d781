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

/**
 * The longest texts of a failed test case a stage result may carry, in UTF-16 code units (string length).
 * The runner shortens what it reports well within them (suite and name to 500, the message to 2000, each
 * with `…` after it: junit-parse.mjs), as runners before it did the message; generous beyond that, as a
 * result is parsed again on receipt.
 */
export const FAILED_TEST_LIMITS = { suite: 1000, name: 1000, message: 4000 } as const;

/** The most failed cases a stage result (or output) names; the counts in `tests` cover them all. */
export const MAX_FAILED_TESTS = 100;

/** `text` cut to `max` code units, `…` last, never between the two halves of a surrogate pair. */
export function clipText(text: string, max: number): string {
  if (text.length <= max) return text;
  let cut = max - 1;
  const last = text.charCodeAt(cut - 1);
  if (last >= 0xd800 && last <= 0xdbff) cut -= 1;
  return `${text.slice(0, cut)}…`;
}

const clipped = (max: number) => z.string().transform((text) => clipText(text, max));

/**
 * A failed test case as a stage result carries it: bounded, so a report's megabyte-long test names
 * cannot swell the job's return value and the run record. Longer texts are cut, not refused: a result
 * from a worker of an earlier version (which cut nothing), read after an upgrade, still counts.
 */
export const FailedTestCase = z.object({
  suite: clipped(FAILED_TEST_LIMITS.suite),
  name: clipped(FAILED_TEST_LIMITS.name),
  message: clipped(FAILED_TEST_LIMITS.message).optional(),
});
export type FailedTestCase = z.infer<typeof FailedTestCase>;

/**
 * A failed test case as StageOutput (and so a stored run record) holds it: without FailedTestCase's
 * limits, as records were written before them, and every stored record must still parse. What is new
 * comes through StageResult, which has them.
 */
const RecordedFailedTestCase = z.object({ suite: z.string(), name: z.string(), message: z.string().optional() });

/**
 * What a stage produced; each stage type fills the fields that concern it. The run record keeps it as
 * it came (see RecordedFailedTestCase); a result carries it as StageResultOutput.
 */
export const StageOutput = z
  .object({
    commit: z.string().optional(),
    artifact: ArtifactRef.optional(),
    phases: z.array(PhaseOutcome).optional(),
    tests: TestCounts.optional(),
    failedTests: z.array(RecordedFailedTestCase).max(MAX_FAILED_TESTS).optional(),
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

/** StageOutput as a stage result carries it (and as it is checked on receipt): its failed cases within FAILED_TEST_LIMITS. */
export const StageResultOutput = StageOutput.extend({ failedTests: z.array(FailedTestCase).max(MAX_FAILED_TESTS).optional() });

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
    output: StageResultOutput.default({}),
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
