import { describeIssues, StageResult } from '@conveyor/contracts';
import type { RunInput } from './state-machine.js';

/**
 * What a stage job's completion means for its run: the StageResult it returned, when that is a valid
 * result for this very job; otherwise the stage is lost (it can never produce a result now).
 */
export function completionInput(jobId: string, returnValue: unknown): { input: RunInput; problem?: string } {
  const parsed = StageResult.safeParse(returnValue);
  if (parsed.success && parsed.data.jobId === jobId) return { input: { type: 'stage-result', result: parsed.data } };
  const problem = parsed.success ? `the result names job ${parsed.data.jobId}` : describeIssues(parsed.error);
  return { input: { type: 'stage-lost', jobId, reason: 'the stage job completed without a valid result' }, problem };
}
