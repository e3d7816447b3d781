import type { ArtifactStore } from '@conveyor/artifacts';
import type { TestJob } from '@conveyor/contracts';
import { collectReports, JUNIT_LIMITS, runBuildspecJob, storeArtifacts, type BuildspecRun, type JUnitLimits, type StoredArtifacts } from '@conveyor/runner';
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

/**
 * The test stage: run the test buildspec on the build artifact, store its `artifacts` (say, a coverage
 * report: kept for download, never the input of a later stage), read its JUnit reports, and gate on them.
 */
export const testJobHandler =
  (deps: TestDeps): StageHandler<'test'> =>
  async (job, ctx) => {
    const log = openStageLog(deps.redis, deps.prefix, job.jobId);
    const again = redeliveryNote(ctx);
    if (again) log.write(again);
    try {
      const runAs = (user: BuildUser | undefined, stopUserProcesses: () => Promise<void>) =>
        runBuildspecJob(job, { artifacts: deps.artifacts, workDir: deps.workDir, log: (t) => log.write(t), signal: ctx.signal, ...(user ? { user } : {}), stopUserProcesses }, (run) => finishTest(job, run, deps, (t) => log.write(t), user, ctx.signal));
      return await (deps.users ? deps.users.withUser(runAs) : runAs(undefined, async () => undefined));
    } finally {
      await log.close();
    }
  };

/** Stores the artifacts (as a build stage does: a failed upload fails the stage), then reads the reports. */
async function finishTest(job: TestJob, run: BuildspecRun, deps: TestDeps, log: (t: string) => void, user: BuildUser | undefined, signal: AbortSignal): Promise<StageOutcome> {
  // Stopped (cancelled, or the job taken from this worker): nothing is worth storing. A job from a control
  // plane that would give this stage's artifact to the next stage (no storeArtifacts) stores none either.
  let stored: StoredArtifacts = { kind: 'none' };
  if (!signal.aborted && job.storeArtifacts) stored = await storeArtifacts(job, run, { artifacts: deps.artifacts, log, signal, ...(user ? { user } : {}) });
  else if (!signal.aborted && run.spec?.artifacts) log('[conveyor] artifacts not stored: the control plane that sent this job predates test stages storing them\n');
  const outcome = await readReports(run, log, user, JUNIT_LIMITS, signal);
  switch (stored.kind) {
    case 'none':
      return outcome;
    case 'failed':
      return { ...outcome, status: 'FAILED', message: outcome.message ? `${outcome.message}; ${stored.message}` : stored.message };
    case 'stored':
      return { ...outcome, output: { ...outcome.output, artifact: stored.artifact } };
  }
}

/**
 * Reads the stage's reports (see collectReports) and gates on them: a failed test case, a report group
 * that matches no file, or a file that is not JUnit fails the stage, as does a failed command.
 */
export async function readReports(run: BuildspecRun, log: (t: string) => void, user?: BuildUser, limits: JUnitLimits = JUNIT_LIMITS, signal?: AbortSignal): Promise<StageOutcome> {
  // What the buildspec exported, as a build stage's: later stages read them as #{<Stage>.<NAME>}.
  const phases = run.phases ? { phases: run.phases.phases, ...(Object.keys(run.phases.exportedVariables).length ? { exportedVariables: run.phases.exportedVariables } : {}) } : {};
  const reports = await collectReports(run, log, { ...(user ? { user } : {}), limits, ...(signal ? { signal } : {}) });
  switch (reports.kind) {
    case 'stopped':
      // The stage worker decides what a stopped job reports.
      return { status: 'FAILED', message: 'stopped before its reports were read' };
    case 'none':
      return { status: run.status, ...(run.message ? { message: run.message } : {}), output: phases };
    case 'read': {
      const { tests, failedTests, problems } = reports;
      const reasons = [...(run.message ? [run.message] : []), ...(tests.failed > 0 ? [`${tests.failed} of ${tests.total} tests failed`] : []), ...problems];
      const status = run.status === 'SUCCEEDED' && tests.failed === 0 && problems.length === 0 ? 'SUCCEEDED' : 'FAILED';
      return { status, ...(reasons.length ? { message: reasons.join('; ') } : {}), output: { ...phases, tests, ...(failedTests.length ? { failedTests } : {}) } };
    }
    default: {
      const never: never = reports;
      throw new Error(`unhandled reports ${JSON.stringify(never)}`);
    }
  }
}
