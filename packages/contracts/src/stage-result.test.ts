import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { clipText, FAILED_TEST_LIMITS, FailedTestCase, Run, StageOutput, StageResult } from './index.js';

const FIXTURES = join(import.meta.dirname, '..', 'fixtures', 'v1');
const load = async (name: string) => JSON.parse(await readFile(join(FIXTURES, name), 'utf8')) as Record<string, unknown>;

describe('failed test cases: bounded in a stage result, as they were in stored runs', () => {
  const huge = 'x'.repeat(1024 * 1024);

  it("a stage result's failed case carries a suite, name or message past its limit cut to it, not refused (a worker of an earlier version cut nothing)", async () => {
    const result = await load('stage-result.test.json');
    const withCase = (c: Record<string, string>) => ({ ...result, output: { ...(result.output as object), failedTests: [c] } });
    const fits = { suite: 's'.repeat(FAILED_TEST_LIMITS.suite), name: 'n'.repeat(FAILED_TEST_LIMITS.name), message: 'm'.repeat(FAILED_TEST_LIMITS.message) };
    expect(StageResult.parse(withCase(fits)).output.failedTests).toEqual([fits]);
    for (const field of ['suite', 'name', 'message'] as const) {
      const parsed = StageResult.parse(withCase({ ...fits, [field]: huge }));
      const text = parsed.output.failedTests![0]![field]!;
      expect(text).toHaveLength(FAILED_TEST_LIMITS[field]);
      expect(text.endsWith('…')).toBe(true);
    }
    expect(FailedTestCase.parse({ suite: 's', name: huge }).name).toHaveLength(FAILED_TEST_LIMITS.name);
    // Never between the halves of a surrogate pair.
    expect(clipText('a😀b', 3)).toBe('a…');
    expect(clipText('ab😀c', 4)).toBe('ab…');
  });

  it('what runners wrote before the limits still parses: a run record keeps failed cases of any length', async () => {
    const run = await load('run.json');
    const stages = (run.stages as Array<Record<string, unknown>>).map((s) =>
      s.name === 'Test' ? { ...s, result: { ...(s.result as object), failedTests: [{ suite: huge, name: huge, message: huge }] } } : s,
    );
    const parsed = Run.parse({ ...run, stages });
    expect(parsed.stages.find((s) => s.name === 'Test')?.result?.failedTests?.[0]?.name).toHaveLength(huge.length);
    expect(StageOutput.safeParse({ failedTests: [{ suite: huge, name: huge }] }).success).toBe(true);
  });

  it('names at most 100 failed cases, in a result as in a record', async () => {
    const cases = Array.from({ length: 101 }, (_, i) => ({ suite: 's', name: `t${i}` }));
    const result = await load('stage-result.test.json');
    expect(StageResult.safeParse({ ...result, output: { failedTests: cases } }).success).toBe(false);
    expect(StageResult.safeParse({ ...result, output: { failedTests: cases.slice(0, 100) } }).success).toBe(true);
    expect(StageOutput.safeParse({ failedTests: cases }).success).toBe(false);
  });
});
