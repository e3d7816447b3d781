import type { ArtifactStore } from '@conveyor/artifacts';
import type { StageOutput } from '@conveyor/contracts';
import { fileSelection, MAX_JUNIT_BYTES, parseJUnit, readSelectedFile, resolveFiles, runBuildspecJob, type BuildspecRun } from '@conveyor/runner';
import type { BuildUser, BuildUsers } from '@conveyor/runner';
import { openStageLog, type Redis, type StageHandler, type StageOutcome } from '@conveyor/service-kit';

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
    try {
      const runAs = (user: BuildUser | undefined, stopUserProcesses: () => Promise<void>) =>
        runBuildspecJob(job, { artifacts: deps.artifacts, workDir: deps.workDir, log: (t) => log.write(t), signal: ctx.signal, ...(user ? { user } : {}), stopUserProcesses }, (run) => readReports(run, (t) => log.write(t), user));
      return await (deps.users ? deps.users.withUser(runAs) : runAs(undefined, async () => undefined));
    } finally {
      await log.close();
    }
  };

type Totals = NonNullable<StageOutput['tests']>;
type Failure = NonNullable<StageOutput['failedTests']>[number];

/**
 * Sums every report group's JUnit files. A group that matches no file, or a file that is not JUnit, fails the stage.
 * The files are the build's (`user`: the user it ran as), read with readSelectedFile: a symlink leaving the
 * workspace, a FIFO, or a file the build's user does not own is a problem of its group, not read.
 */
export async function readReports(run: BuildspecRun, log: (t: string) => void, user?: BuildUser): Promise<StageOutcome> {
  const phases = run.phases ? { phases: run.phases.phases } : {};
  const groups = Object.entries(run.spec?.reports ?? {});
  if (!run.spec || groups.length === 0) return { status: run.status, ...(run.message ? { message: run.message } : {}), output: phases };
  const tests: Totals = { total: 0, passed: 0, failed: 0, skipped: 0 };
  const failedTests: Failure[] = [];
  const problems: string[] = [];
  for (const [group, report] of groups) {
    try {
      const files = await resolveFiles(run.workspace, fileSelection(report, `reports.${group}`));
      for (const file of files.files) {
        const text = (await readSelectedFile(files, file, { ...(user ? { user } : {}), maxBytes: MAX_JUNIT_BYTES })).toString('utf8');
        let summary: ReturnType<typeof parseJUnit>;
        try {
          summary = parseJUnit(text);
        } catch (err) {
          // Which report of which group: a bare "malformed XML at line 1" leaves the reader guessing.
          throw new Error(`${file}: ${(err as Error).message}`, { cause: err });
        }
        tests.total += summary.total;
        tests.passed += summary.passed;
        tests.failed += summary.failed;
        tests.skipped += summary.skipped;
        failedTests.push(...summary.failures.slice(0, 100 - failedTests.length));
        log(`[conveyor] report ${group}: ${file}: ${summary.passed} passed, ${summary.failed} failed, ${summary.skipped} skipped\n`);
      }
    } catch (err) {
      problems.push((err as Error).message);
      log(`[conveyor] report ${group}: ${(err as Error).message}\n`);
    }
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
