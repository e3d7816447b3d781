import type { ArtifactStore } from '@conveyor/artifacts';
import type { StageOutput } from '@conveyor/contracts';
import { fileSelection, JUNIT_LIMITS, JUnitError, JUnitReader, resolveFiles, runBuildspecJob, type BuildspecRun, type JUnitLimits, type JUnitSummary, type ResolvedFiles } from '@conveyor/runner';
import type { BuildUser, BuildUsers } from '@conveyor/runner';
import { openStageLog, redeliveryNote, type Redis, type StageHandler, type StageOutcome } from '@conveyor/service-kit';

export interface TestDeps {
  artifacts: ArtifactStore;
  redis: Redis;
  prefix: string;
  workDir: string;
  /** Who each build runs as (default: this service's own user). */
  users?: BuildUsers;
}

/** The test stage: run the test buildspec on the build artifact, read its JUnit reports, and gate on them. */
export const testJobHandler =
  (deps: TestDeps): StageHandler<'test'> =>
  async (job, ctx) => {
    const log = openStageLog(deps.redis, deps.prefix, job.jobId);
    const again = redeliveryNote(ctx);
    if (again) log.write(again);
    try {
      const runAs = (user: BuildUser | undefined, stopUserProcesses: () => Promise<void>) =>
        runBuildspecJob(job, { artifacts: deps.artifacts, workDir: deps.workDir, log: (t) => log.write(t), signal: ctx.signal, ...(user ? { user } : {}), stopUserProcesses }, (run) => readReports(run, (t) => log.write(t), user, JUNIT_LIMITS, ctx.signal));
      return await (deps.users ? deps.users.withUser(runAs) : runAs(undefined, async () => undefined));
    } finally {
      await log.close();
    }
  };

/** One report's counts; its problems name it: a bare "malformed XML at line 1" leaves the reader guessing. */
async function readReport(reader: JUnitReader, files: ResolvedFiles, file: string, user: BuildUser | undefined): Promise<JUnitSummary> {
  try {
    return await reader.read(files, file, user);
  } catch (err) {
    // Problems of opening it (a FIFO, a way out of the workspace) already name it.
    throw err instanceof JUnitError ? new Error(`${file}: ${err.message}`, { cause: err }) : err;
  }
}

type Totals = NonNullable<StageOutput['tests']>;
type Failure = NonNullable<StageOutput['failedTests']>[number];

/**
 * Sums every report group's JUnit files. A group that matches no file, or a file that is not JUnit, fails the stage.
 * The files are the build's (`user`: the user it ran as), opened with the checks of readSelectedFile: a symlink
 * leaving the workspace, a FIFO, or a file the build's user does not own is a problem of its group, not read.
 * They are parsed by a JUnitReader, off this thread and within `limits`: a report too big, too slow or too
 * memory-hungry to parse is a problem of its group too, and the service stays responsive meanwhile.
 */
export async function readReports(run: BuildspecRun, log: (t: string) => void, user?: BuildUser, limits: JUnitLimits = JUNIT_LIMITS, signal?: AbortSignal): Promise<StageOutcome> {
  // Stopped (the run cancelled, or this service shutting down): no report is read, nor said missing
  // (the stage worker decides what a stopped job reports); a parse under way ends.
  const stopped: StageOutcome = { status: 'FAILED', message: 'stopped before its reports were read' };
  if (signal?.aborted) return stopped;
  const phases = run.phases ? { phases: run.phases.phases } : {};
  const groups = Object.entries(run.spec?.reports ?? {});
  if (!run.spec || groups.length === 0) return { status: run.status, ...(run.message ? { message: run.message } : {}), output: phases };
  const tests: Totals = { total: 0, passed: 0, failed: 0, skipped: 0 };
  const failedTests: Failure[] = [];
  const problems: string[] = [];
  const reader = new JUnitReader(limits, signal);
  try {
    for (const [group, report] of groups) {
      if (signal?.aborted) return stopped;
      try {
        const files = await resolveFiles(run.workspace, fileSelection(report, `reports.${group}`));
        for (const file of files.files) {
          const summary = await readReport(reader, files, file, user);
          tests.total += summary.total;
          tests.passed += summary.passed;
          tests.failed += summary.failed;
          tests.skipped += summary.skipped;
          failedTests.push(...summary.failures.slice(0, 100 - failedTests.length));
          log(`[conveyor] report ${group}: ${file}: ${summary.passed} passed, ${summary.failed} failed, ${summary.skipped} skipped\n`);
        }
      } catch (err) {
        if (signal?.aborted) return stopped;
        problems.push((err as Error).message);
        log(`[conveyor] report ${group}: ${(err as Error).message}\n`);
      }
    }
  } finally {
    await reader.close();
  }
  for (const f of failedTests) log(`[conveyor] FAILED ${f.suite} › ${f.name}${f.message ? `: ${f.message.split('\n')[0]}` : ''}\n`);
  const reasons = [
    ...(run.message ? [run.message] : []),
    ...(tests.failed > 0 ? [`${tests.failed} of ${tests.total} tests failed`] : []),
    ...problems,
  ];
  const status = run.status === 'SUCCEEDED' && tests.failed === 0 && problems.length === 0 ? 'SUCCEEDED' : 'FAILED';
  return { status, ...(reasons.length ? { message: reasons.join('; ') } : {}), output: { ...phases, tests, ...(failedTests.length ? { failedTests } : {}) } };
}
