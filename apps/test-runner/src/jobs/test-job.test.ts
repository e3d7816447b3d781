import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { junitXml } from '@conveyor/testing';
import { JUNIT_LIMITS, type BuildspecRun } from '@conveyor/runner';
import { finishedBuild as finishedIn } from '@conveyor/runner/testkit';
import { readReports } from './test-job.js';

// How reports are read (limits, stalls, stops mid-parse) is tested with collectReports in packages/runner;
// here, how the test stage gates on what they came to.

let ws: string;
beforeEach(async () => {
  ws = await mkdtemp(join(tmpdir(), 'cv-reports-'));
});
afterEach(async () => {
  await rm(ws, { recursive: true, force: true });
});

const junit = junitXml;

/** A finished build whose workspace holds `files` and whose buildspec has the given `reports:` section (none when undefined). */
const finishedBuild = (files: Record<string, string>, reports: string | undefined, over: Partial<BuildspecRun> = {}) => finishedIn(ws, files, reports === undefined ? '' : `reports:\n${reports}`, over);

describe('readReports: the test stage gates on its reports', () => {
  it('succeeds when every case passed, with the counts', async () => {
    const run = await finishedBuild({ 'r.xml': junit('<testcase name="a"/><testcase name="b"><skipped/></testcase>') }, "  unit:\n    files: [ 'r.xml' ]\n");
    expect(await readReports(run, () => undefined)).toEqual({ status: 'SUCCEEDED', output: { tests: { total: 2, passed: 1, failed: 0, skipped: 1 } } });
  });

  it('a failed case fails the stage, saying how many, after the command\'s own failure', async () => {
    const run = await finishedBuild({ 'r.xml': junit('<testcase name="a"/><testcase name="b"><failure message="no"/></testcase>') }, "  unit:\n    files: [ 'r.xml' ]\n", { status: 'FAILED', message: 'phase build failed' });
    expect(await readReports(run, () => undefined)).toEqual({
      status: 'FAILED',
      message: 'phase build failed; 1 of 2 tests failed',
      output: { tests: { total: 2, passed: 1, failed: 1, skipped: 0 }, failedTests: [{ suite: 's', name: 'b', message: 'no' }] },
    });
  });

  it('a report over the size limits fails the stage naming the file, unread; every problem is in the message', async () => {
    const report = junit('<testcase name="a"/>');
    const big = `${report}${' '.repeat(2000)}`;
    const run = await finishedBuild(
      { 'reports/a.xml': report, 'reports/b.xml': report, 'large/c.xml': big },
      "  large:\n    files: [ 'large/*.xml' ]\n  unit:\n    files: [ 'reports/*.xml' ]\n",
    );
    const bytes = Buffer.byteLength(report);
    const outcome = await readReports(run, () => undefined, undefined, { ...JUNIT_LIMITS, maxFileBytes: 2000, maxTotalBytes: bytes * 2 - 1 });
    expect(outcome.status).toBe('FAILED');
    expect(outcome.message).toBe(
      `large/c.xml: the report is ${Buffer.byteLength(big)} bytes, more than the 2000 bytes a report may be; it is not read; ` +
        `reports/b.xml: with this report the stage's reports come to ${bytes * 2} bytes, more than the ${bytes * 2 - 1} bytes allowed in all; it is not read`,
    );
    expect(outcome.output?.tests).toEqual({ total: 1, passed: 1, failed: 0, skipped: 0 });
  });

  it('a group that matches no file fails a stage whose cases all passed, and its log line carries no note', async () => {
    const lines: string[] = [];
    const run = await finishedBuild({ 'r.xml': junit('<testcase name="a"/>') }, "  unit:\n    files: [ 'r.xml' ]\n  gone:\n    files: [ 'gone/*.xml' ]\n");
    const outcome = await readReports(run, (t) => lines.push(t));
    expect(outcome).toMatchObject({ status: 'FAILED', message: expect.stringMatching(/^reports\.gone/), output: { tests: { total: 1, passed: 1, failed: 0, skipped: 0 } } });
    expect(lines).toContain(`[conveyor] report gone: ${outcome.message}\n`);
  });

  it('passes on what the buildspec exported, for later stages to read as #{<Stage>.<NAME>}', async () => {
    const phases = { status: 'SUCCEEDED' as const, phases: [], exportedVariables: { SUITE: 'unit' }, durationMs: 5 };
    const run = await finishedBuild({ 'r.xml': junit('<testcase name="a"/>') }, "  unit:\n    files: [ 'r.xml' ]\n", { phases });
    expect((await readReports(run, () => undefined)).output).toMatchObject({ exportedVariables: { SUITE: 'unit' }, tests: { total: 1, passed: 1 } });
    const none = await finishedBuild({}, undefined, { phases: { ...phases, exportedVariables: {} } });
    expect((await readReports(none, () => undefined)).output).not.toHaveProperty('exportedVariables');
  });

  it('a stage without reports takes the command\'s status, with no counts', async () => {
    const run = await finishedBuild({}, undefined, { status: 'FAILED', message: 'phase build failed' });
    expect(await readReports(run, () => undefined)).toEqual({ status: 'FAILED', message: 'phase build failed', output: {} });
    expect(await readReports({ status: 'SUCCEEDED', workspace: ws }, () => undefined)).toEqual({ status: 'SUCCEEDED', output: {} });
  });

  it('a stopped stage fails without reading a report, nor saying one is missing', async () => {
    const lines: string[] = [];
    const run = await finishedBuild({}, "  unit:\n    files: [ 'r.xml' ]\n");
    expect(await readReports(run, (t) => lines.push(t), undefined, JUNIT_LIMITS, AbortSignal.abort('run cancelled'))).toEqual({ status: 'FAILED', message: 'stopped before its reports were read' });
    expect(lines).toEqual([]);
  });
});
