import { MAX_FAILED_TESTS, type TestCounts } from '@conveyor/contracts';
import type { BuildspecRun } from './buildspec-job.js';
import { fileSelection, resolveFiles, type ResolvedFiles } from './globs.js';
import { JUNIT_LIMITS, JUnitError, JUnitReader, type JUnitFailure, type JUnitLimits, type JUnitSummary } from './junit.js';
import type { BuildUser } from './shell-process.js';

/** The most report files the problem of reports without test cases names. */
const MAX_NAMED_FILES = 10;

/**
 * What a buildspec's `reports` came to: `none` (no `reports` declared, or no buildspec read),
 * `stopped` (the job was stopped: nothing more is read, nor said missing), or the sums of every
 * report read, with one problem per group that could not be read in full, and one more when the
 * files read hold no test case at all ("no test cases in the reports: …").
 */
export type CollectedReports =
  | { kind: 'none' }
  | { kind: 'stopped' }
  | { kind: 'read'; tests: TestCounts; failedTests: JUnitFailure[]; problems: string[] };

export interface CollectReportsOptions {
  /** The user the build ran as: its reports are read only as regular files of that user. */
  user?: BuildUser;
  limits?: JUnitLimits;
  signal?: AbortSignal;
  /** Appended to each problem's log line (the build stage says there that a problem does not fail it). */
  problemNote?: string;
}

/**
 * Reads every report group's JUnit files and sums them; whether that passes is the caller's to decide.
 * Each file read is logged (`[conveyor] report <group>: <file>: …`), each problem (a group that matches
 * no file, a file that is not JUnit) too, then each failed case.
 * The files are the build's (`user`: the user it ran as), opened with the checks of readSelectedFile: a symlink
 * leaving the workspace, a FIFO, or a file the build's user does not own is a problem of its group, not read.
 * They are parsed by a JUnitReader, off this thread and within `limits`: a report too big, too slow or too
 * memory-hungry to parse is a problem of its group too, and the service stays responsive meanwhile.
 */
export async function collectReports(run: Pick<BuildspecRun, 'workspace' | 'spec'>, log: (t: string) => void, opts: CollectReportsOptions = {}): Promise<CollectedReports> {
  const { signal } = opts;
  // Stopped (the run cancelled, or this service shutting down): no report is read, nor said missing;
  // a parse under way ends.
  if (signal?.aborted) return { kind: 'stopped' };
  const groups = Object.entries(run.spec?.reports ?? {});
  if (groups.length === 0) return { kind: 'none' };
  const tests: TestCounts = { total: 0, passed: 0, failed: 0, skipped: 0 };
  const failedTests: JUnitFailure[] = [];
  const problems: string[] = [];
  /** The files read, for the problem of reports that hold no test case at all. */
  const read: string[] = [];
  const reader = new JUnitReader(opts.limits ?? JUNIT_LIMITS, signal);
  try {
    for (const [group, report] of groups) {
      if (signal?.aborted) return { kind: 'stopped' };
      try {
        // Read where they lie, never stored under the names discard-paths would give them: two groups'
        // or modules' junit.xml are no collision here (an artifact would have both at one name).
        const files = await resolveFiles(run.workspace, { ...fileSelection(report, `reports.${group}`), discardPaths: false });
        for (const file of files.files) {
          const summary = await readReport(reader, files, file, opts.user);
          read.push(file);
          tests.total += summary.total;
          tests.passed += summary.passed;
          tests.failed += summary.failed;
          tests.skipped += summary.skipped;
          failedTests.push(...summary.failures.slice(0, MAX_FAILED_TESTS - failedTests.length));
          log(`[conveyor] report ${group}: ${file}: ${summary.passed} passed, ${summary.failed} failed, ${summary.skipped} skipped\n`);
        }
      } catch (err) {
        if (signal?.aborted) return { kind: 'stopped' };
        problems.push((err as Error).message);
        log(`[conveyor] report ${group}: ${(err as Error).message}${opts.problemNote ?? ''}\n`);
      }
    }
  } finally {
    await reader.close();
  }
  if (read.length > 0 && tests.total === 0) {
    // Reports that ran no test (`<testsuite tests="0"/>`: a filter that matched nothing, a runner that found
    // no test file) pass no gate: a test gate that found no results does not pass.
    const shown = read.length > MAX_NAMED_FILES ? `${read.slice(0, MAX_NAMED_FILES).join(', ')} and ${read.length - MAX_NAMED_FILES} more` : read.join(', ');
    const problem = `no test cases in the reports: ${shown}`;
    problems.push(problem);
    log(`[conveyor] reports: ${problem}${opts.problemNote ?? ''}\n`);
  }
  for (const f of failedTests) log(`[conveyor] FAILED ${f.suite} › ${f.name}${f.message ? `: ${f.message.split('\n')[0]}` : ''}\n`);
  return { kind: 'read', tests, failedTests, problems };
}

/** One report's counts; its problems name it: a bare "malformed XML at line 1" leaves the reader guessing. */
async function readReport(reader: JUnitReader, files: ResolvedFiles, file: string, user: BuildUser | undefined): Promise<JUnitSummary> {
  try {
    return await reader.read(files, file, user);
  } catch (err) {
    // Problems of opening it (a FIFO, a way out of the workspace) already name it.
    throw err instanceof JUnitError ? new Error(`${file}: ${err.message}`, { cause: err }) : err;
  }
}
