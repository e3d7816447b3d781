import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { CATASTROPHIC_GLOB, GLOB_VICTIM, junitXml } from '@conveyor/testing';
import { GLOB_LIMITS } from '@conveyor/globs';
import { StageResultOutput } from '@conveyor/contracts';
import { finishedBuild as finishedIn } from './testkit.js';
import type { BuildspecRun } from './buildspec-job.js';
import { JUNIT_LIMITS } from './junit.js';
import { collectReports, type CollectedReports, type CollectReportsOptions } from './reports.js';

let ws: string;
beforeEach(async () => {
  ws = await mkdtemp(join(tmpdir(), 'cv-reports-'));
});
afterEach(async () => {
  await rm(ws, { recursive: true, force: true });
});

const junit = junitXml;
/** One element with 600k attributes (5.6 MB): parsed in the main thread, it held the event loop for seconds. */
const attributeBomb = `<testsuite ${Array.from({ length: 600_000 }, (_, i) => `a${i}=""`).join(' ')}/>`;

/** A finished build whose workspace holds `files` and whose buildspec has the given `reports:` section (none when undefined). */
const finishedBuild = (files: Record<string, string>, reports: string | undefined) => finishedIn(ws, files, reports === undefined ? '' : `reports:\n${reports}`);

/** The counts of a collection that read its reports (fails the test otherwise). */
function read(collected: CollectedReports) {
  if (collected.kind !== 'read') throw new Error(`expected the reports to be read, not ${collected.kind}`);
  return collected;
}

/** collectReports, and the longest the event loop went without a turn meanwhile (lock renewals and /healthz wait for it). */
async function collectWatched(run: BuildspecRun, opts: CollectReportsOptions = {}) {
  const delay = monitorEventLoopDelay({ resolution: 10 });
  delay.enable();
  const started = performance.now();
  try {
    const collected = await collectReports(run, () => undefined, opts);
    const elapsedMs = performance.now() - started;
    await new Promise((r) => setTimeout(r, 30)); // a sample after it, to record a block that lasted to its end
    return { collected: read(collected), elapsedMs, stallMs: delay.max / 1e6 };
  } finally {
    delay.disable();
  }
}

describe('collectReports', () => {
  it('sums every group\'s files, logs a line per file and per failed case, and names the problems of a group', async () => {
    const run = await finishedBuild(
      {
        'reports/a.xml': junit('<testcase name="a"/><testcase name="b"><skipped/></testcase>'),
        'reports/b.xml': junit('<testcase classname="math" name="adds"><failure message="expected 3&#10;got 4"/></testcase>'),
      },
      "  unit:\n    files: [ 'reports/*.xml' ]\n  missing:\n    files: [ 'nowhere/*.xml' ]\n",
    );
    const lines: string[] = [];
    const collected = read(await collectReports(run, (t) => lines.push(t), { problemNote: ' (a note)' }));
    expect(collected.tests).toEqual({ total: 3, passed: 1, failed: 1, skipped: 1 });
    expect(collected.failedTests).toEqual([{ suite: 'math', name: 'adds', message: 'expected 3\ngot 4' }]);
    expect(collected.problems).toHaveLength(1);
    expect(collected.problems[0]).toMatch(/^reports\.missing/);
    expect(lines).toEqual([
      '[conveyor] report unit: reports/a.xml: 1 passed, 0 failed, 1 skipped\n',
      '[conveyor] report unit: reports/b.xml: 0 passed, 1 failed, 0 skipped\n',
      `[conveyor] report missing: ${collected.problems[0]} (a note)\n`,
      '[conveyor] FAILED math › adds: expected 3\n',
    ]);
  });

  it('keeps the first 100 failed cases and counts them all', async () => {
    const cases = Array.from({ length: 150 }, (_, i) => `<testcase name="t${i}"><failure/></testcase>`).join('');
    const collected = read(await collectReports(await finishedBuild({ 'r.xml': junit(cases) }, "  unit:\n    files: [ 'r.xml' ]\n"), () => undefined));
    expect(collected.tests).toEqual({ total: 150, passed: 0, failed: 150, skipped: 0 });
    expect(collected.failedTests).toHaveLength(100);
    expect(collected.failedTests[99]!.name).toBe('t99');
  });

  it('discard-paths: yes does not keep two reports of one file name from being read (reports are read where they lie)', async () => {
    const run = await finishedBuild(
      { 'mod1/junit.xml': junit('<testcase name="a"/>'), 'mod2/junit.xml': junit('<testcase name="b"><failure/></testcase>') },
      "  unit:\n    files: [ '**/junit.xml' ]\n    discard-paths: yes\n",
    );
    const lines: string[] = [];
    const collected = read(await collectReports(run, (t) => lines.push(t)));
    expect(collected.problems).toEqual([]);
    expect(collected.tests).toEqual({ total: 2, passed: 1, failed: 1, skipped: 0 });
    expect(lines.slice(0, 2)).toEqual(['[conveyor] report unit: mod1/junit.xml: 1 passed, 0 failed, 0 skipped\n', '[conveyor] report unit: mod2/junit.xml: 0 passed, 1 failed, 0 skipped\n']);
  });

  it('reports that hold no test case at all are a problem naming them (a test gate that found no results does not pass)', async () => {
    const run = await finishedBuild(
      { 'reports/a.xml': '<testsuite name="none" tests="0"/>', 'reports/b.xml': junit(''), 'other/c.xml': '<testsuites/>' },
      "  unit:\n    files: [ 'reports/*.xml' ]\n  other:\n    files: [ 'other/*.xml' ]\n",
    );
    const lines: string[] = [];
    const collected = read(await collectReports(run, (t) => lines.push(t), { problemNote: ' (a note)' }));
    expect(collected.tests).toEqual({ total: 0, passed: 0, failed: 0, skipped: 0 });
    expect(collected.problems).toEqual(['no test cases in the reports: reports/a.xml, reports/b.xml, other/c.xml']);
    expect(lines.at(-1)).toBe('[conveyor] reports: no test cases in the reports: reports/a.xml, reports/b.xml, other/c.xml (a note)\n');
    // One test case anywhere, even skipped, is a result; and no file read at all is the groups' own problem.
    const skipped = read(await collectReports(await finishedBuild({ 'other/c.xml': junit('<testcase name="s"><skipped/></testcase>') }, "  unit:\n    files: [ 'reports/*.xml' ]\n  other:\n    files: [ 'other/*.xml' ]\n"), () => undefined));
    expect(skipped.problems).toEqual([]);
    const none = read(await collectReports(await finishedBuild({}, "  unit:\n    files: [ 'nowhere/*.xml' ]\n"), () => undefined));
    expect(none.problems).toHaveLength(1);
    expect(none.problems[0]).toMatch(/^reports\.unit\.files: no files matched/);
  });

  it('a report of failed cases with huge names makes a small result, within the contract (a stage result is its BullMQ return value)', async () => {
    const huge = 'n'.repeat(256 * 1024);
    const cases = Array.from({ length: 10 }, (_, i) => `<testcase classname="${huge}" name="t${i}${huge}"><failure message="${huge}"/></testcase>`).join('');
    const collected = read(await collectReports(await finishedBuild({ 'r.xml': junit(cases) }, "  unit:\n    files: [ 'r.xml' ]\n"), () => undefined));
    expect(collected.tests).toEqual({ total: 10, passed: 0, failed: 10, skipped: 0 });
    const output = { tests: collected.tests, failedTests: collected.failedTests };
    expect(StageResultOutput.safeParse(output).success).toBe(true);
    expect(Buffer.byteLength(JSON.stringify(output))).toBeLessThan(40_000);
  });

  it('reads nothing, and logs nothing, when the buildspec declares no reports or was not read', async () => {
    const lines: string[] = [];
    const run = await finishedBuild({ 'r.xml': junit('<testcase name="a"/>') }, undefined);
    expect(await collectReports(run, (t) => lines.push(t))).toEqual({ kind: 'none' });
    expect(await collectReports({ workspace: ws }, (t) => lines.push(t))).toEqual({ kind: 'none' });
    expect(lines).toEqual([]);
  });

  it('reads nothing once stopped', async () => {
    const lines: string[] = [];
    const run = await finishedBuild({ 'r.xml': junit('<testcase name="a"/>') }, "  unit:\n    files: [ 'nowhere.xml' ]\n");
    expect(await collectReports(run, (t) => lines.push(t), { signal: AbortSignal.abort('run cancelled') })).toEqual({ kind: 'stopped' });
    expect(lines).toEqual([]); // not even the missing file
  });
});

describe('collectReports: reports the build made cannot stall the service', () => {
  it('a report too costly to parse is a problem naming the file, the other groups are counted, and the event loop keeps turning', async () => {
    const run = await finishedBuild(
      { 'reports/junit.xml': attributeBomb, 'ok/junit.xml': junit('<testcase name="a"/><testcase name="b"/>') },
      "  unit:\n    files: [ 'reports/*.xml' ]\n  ok:\n    files: [ 'ok/*.xml' ]\n",
    );
    const { collected, elapsedMs, stallMs } = await collectWatched(run, { limits: { ...JUNIT_LIMITS, maxHeapMb: 64 } });
    expect(collected.problems).toEqual(['reports/junit.xml: the report needs more than 64 MB of memory to parse; it is not counted']);
    expect(collected.tests).toEqual({ total: 2, passed: 2, failed: 0, skipped: 0 });
    expect(elapsedMs).toBeLessThan(20_000);
    expect(stallMs).toBeLessThan(1500); // a parse in this thread would hold it for seconds
  });

  it('a collection stopped while a report is parsed ends the parse and reads no other report', async () => {
    const run = await finishedBuild(
      { 'reports/junit.xml': attributeBomb, 'ok/junit.xml': junit('<testcase name="a"/>') },
      "  unit:\n    files: [ 'reports/*.xml' ]\n  ok:\n    files: [ 'ok/*.xml' ]\n",
    );
    const lines: string[] = [];
    const stop = new AbortController();
    setTimeout(() => stop.abort('run cancelled'), 200);
    // Were the stop not heard, the parse would go on to its 60 s limit: far past this test's timeout.
    const collected = await collectReports(run, (t) => lines.push(t), { limits: { ...JUNIT_LIMITS, timeoutMs: 60_000, maxHeapMb: 2048 }, signal: stop.signal });
    expect(collected).toEqual({ kind: 'stopped' });
    expect(lines.join('')).not.toContain('report ok');
  });

  it('a report over the size limits is a problem naming the file, unread', async () => {
    const report = junit('<testcase name="a"/>');
    const big = `${report}${' '.repeat(2000)}`;
    const run = await finishedBuild(
      { 'reports/a.xml': report, 'reports/b.xml': report, 'large/c.xml': big },
      "  large:\n    files: [ 'large/*.xml' ]\n  unit:\n    files: [ 'reports/*.xml' ]\n",
    );
    const bytes = Buffer.byteLength(report);
    const { collected } = await collectWatched(run, { limits: { ...JUNIT_LIMITS, maxFileBytes: 2000, maxTotalBytes: bytes * 2 - 1 } });
    expect(collected.problems).toEqual([
      `large/c.xml: the report is ${Buffer.byteLength(big)} bytes, more than the 2000 bytes a report may be; it is not read`,
      `reports/b.xml: with this report the stage's reports come to ${bytes * 2} bytes, more than the ${bytes * 2 - 1} bytes allowed in all; it is not read`,
    ]);
    expect(collected.tests).toEqual({ total: 1, passed: 1, failed: 0, skipped: 0 });
  });

  it('a report glob that backtracks catastrophically is a problem naming it, within its time limit', async () => {
    const glob = CATASTROPHIC_GLOB;
    const run = await finishedBuild({ [`reports/${GLOB_VICTIM}`]: '', 'reports/junit.xml': junit('<testcase name="a"/>') }, `  unit:\n    files: [ 'reports/*.xml' ]\n  slow:\n    files: [ 'reports/${glob}' ]\n`);
    const { collected, elapsedMs, stallMs } = await collectWatched(run);
    expect(collected.problems).toEqual([`reports.slow.files[0]: the glob "reports/${glob}" took longer than ${GLOB_LIMITS.perGlobMs / 1000} s to match; simplify it`]);
    expect(collected.tests).toEqual({ total: 1, passed: 1, failed: 0, skipped: 0 });
    expect(elapsedMs).toBeLessThan(GLOB_LIMITS.perGlobMs + 5000);
    expect(stallMs).toBeLessThan(GLOB_LIMITS.perGlobMs + 1500);
  });
});
