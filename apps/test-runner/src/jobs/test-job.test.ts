import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { GLOB_LIMITS, JUNIT_LIMITS, parseBuildspec, type BuildspecRun } from '@conveyor/runner';
import { readReports } from './test-job.js';

let ws: string;
beforeEach(async () => {
  ws = await mkdtemp(join(tmpdir(), 'cv-reports-'));
});
afterEach(async () => {
  await rm(ws, { recursive: true, force: true });
});

const junit = (cases: string) => `<?xml version="1.0"?>\n<testsuites><testsuite name="s">${cases}</testsuite></testsuites>\n`;
/** One element with 600k attributes (5.6 MB): parsed in the main thread, it held the event loop for seconds. */
const attributeBomb = `<testsuite ${Array.from({ length: 600_000 }, (_, i) => `a${i}=""`).join(' ')}/>`;

/** A finished build whose workspace holds `files` and whose buildspec has the given `reports:` section. */
async function finishedBuild(files: Record<string, string>, reports: string): Promise<BuildspecRun> {
  for (const [path, content] of Object.entries(files)) {
    await mkdir(dirname(join(ws, path)), { recursive: true });
    await writeFile(join(ws, path), content);
  }
  const spec = parseBuildspec(`version: 0.2\nphases:\n  build:\n    commands: [ 'true' ]\nreports:\n${reports}`);
  return { status: 'SUCCEEDED', workspace: ws, spec };
}

/** readReports, and the longest the event loop went without a turn meanwhile (lock renewals and /healthz wait for it). */
async function readWatched(run: BuildspecRun, limits = JUNIT_LIMITS) {
  const delay = monitorEventLoopDelay({ resolution: 10 });
  delay.enable();
  const started = performance.now();
  try {
    const outcome = await readReports(run, () => undefined, undefined, limits);
    const elapsedMs = performance.now() - started;
    await new Promise((r) => setTimeout(r, 30)); // a sample after it, to record a block that lasted to its end
    return { outcome, elapsedMs, stallMs: delay.max / 1e6 };
  } finally {
    delay.disable();
  }
}

describe('readReports: reports the build made cannot stall the service', () => {
  it('a report too costly to parse fails the stage naming the file, the other groups are counted, and the event loop keeps turning', async () => {
    const run = await finishedBuild(
      { 'reports/junit.xml': attributeBomb, 'ok/junit.xml': junit('<testcase name="a"/><testcase name="b"/>') },
      "  unit:\n    files: [ 'reports/*.xml' ]\n  ok:\n    files: [ 'ok/*.xml' ]\n",
    );
    const { outcome, elapsedMs, stallMs } = await readWatched(run, { ...JUNIT_LIMITS, maxHeapMb: 64 });
    expect(outcome.status).toBe('FAILED');
    expect(outcome.message).toBe('reports/junit.xml: the report needs more than 64 MB of memory to parse; it is not counted');
    expect(outcome.output?.tests).toEqual({ total: 2, passed: 2, failed: 0, skipped: 0 });
    expect(elapsedMs).toBeLessThan(20_000);
    expect(stallMs).toBeLessThan(1500); // a parse in this thread would hold it for seconds
  });

  it('a stage stopped while a report is parsed ends the parse and reads no other report', async () => {
    const run = await finishedBuild(
      { 'reports/junit.xml': attributeBomb, 'ok/junit.xml': junit('<testcase name="a"/>') },
      "  unit:\n    files: [ 'reports/*.xml' ]\n  ok:\n    files: [ 'ok/*.xml' ]\n",
    );
    const lines: string[] = [];
    const stop = new AbortController();
    setTimeout(() => stop.abort('run cancelled'), 200);
    // Were the stop not heard, the parse would go on to its 60 s limit: far past this test's timeout.
    const outcome = await readReports(run, (t) => lines.push(t), undefined, { ...JUNIT_LIMITS, timeoutMs: 60_000, maxHeapMb: 2048 }, stop.signal);
    expect(outcome).toEqual({ status: 'FAILED', message: 'stopped before its reports were read' });
    expect(lines.join('')).not.toContain('report ok');
  });

  it('a report over the size limits fails the stage naming the file, unread', async () => {
    const report = junit('<testcase name="a"/>');
    const big = `${report}${' '.repeat(2000)}`;
    const run = await finishedBuild(
      { 'reports/a.xml': report, 'reports/b.xml': report, 'large/c.xml': big },
      "  large:\n    files: [ 'large/*.xml' ]\n  unit:\n    files: [ 'reports/*.xml' ]\n",
    );
    const bytes = Buffer.byteLength(report);
    const { outcome } = await readWatched(run, { ...JUNIT_LIMITS, maxFileBytes: 2000, maxTotalBytes: bytes * 2 - 1 });
    expect(outcome.status).toBe('FAILED');
    expect(outcome.message).toBe(
      `large/c.xml: the report is ${Buffer.byteLength(big)} bytes, more than the 2000 bytes a report may be; it is not read; ` +
        `reports/b.xml: with this report the stage's reports come to ${bytes * 2} bytes, more than the ${bytes * 2 - 1} bytes allowed in all; it is not read`,
    );
    expect(outcome.output?.tests).toEqual({ total: 1, passed: 1, failed: 0, skipped: 0 });
  });

  it('a report glob that backtracks catastrophically fails the stage naming it, within its time limit', async () => {
    const glob = `${'*a'.repeat(9)}*b`; // against a name of 45 `a`s: about 30 s in picomatch's regex, unbounded
    const run = await finishedBuild({ [`reports/${'a'.repeat(45)}`]: '', 'reports/junit.xml': junit('<testcase name="a"/>') }, `  unit:\n    files: [ 'reports/*.xml' ]\n  slow:\n    files: [ 'reports/${glob}' ]\n`);
    const { outcome, elapsedMs, stallMs } = await readWatched(run);
    expect(outcome.status).toBe('FAILED');
    expect(outcome.message).toBe(`reports.slow.files[0]: the glob "reports/${glob}" took longer than ${GLOB_LIMITS.perGlobMs / 1000} s to match; simplify it`);
    expect(outcome.output?.tests).toEqual({ total: 1, passed: 1, failed: 0, skipped: 0 });
    expect(elapsedMs).toBeLessThan(GLOB_LIMITS.perGlobMs + 5000);
    expect(stallMs).toBeLessThan(GLOB_LIMITS.perGlobMs + 1500);
  });
});
