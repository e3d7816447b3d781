import { describe, expect, it } from 'vitest';
import type { StageResult } from '@conveyor/contracts';
import { completionInput } from './outcome.js';

const jobId = 'run-outcome-1.Build.1';
const result: StageResult = {
  v: 1, jobId, runId: 'run-outcome-1', stage: 'Build', stageIndex: 1, attempt: 1, status: 'SUCCEEDED',
  startedAt: '2026-11-27T06:00:00.000Z', finishedAt: '2026-11-27T06:00:01.000Z', output: {},
};

describe('completionInput', () => {
  it('a valid result for the job is applied as its result', () => {
    expect(completionInput(jobId, result)).toEqual({ input: { type: 'stage-result', result } });
  });

  it('a valid result naming another job loses the stage', () => {
    const { input, problem } = completionInput(jobId, { ...result, jobId: 'run-outcome-1.Build.2' });
    expect(input).toEqual({ type: 'stage-lost', jobId, reason: 'the stage job completed without a valid result' });
    expect(problem).toBe('the result names job run-outcome-1.Build.2');
  });

  it('anything else loses the stage and says which field is wrong', () => {
    const { input, problem } = completionInput(jobId, { ...result, status: 'DONE' });
    expect(input).toMatchObject({ type: 'stage-lost', jobId });
    expect(problem).toMatch(/^status: /);
    expect(completionInput(jobId, undefined).input.type).toBe('stage-lost');
  });
});
