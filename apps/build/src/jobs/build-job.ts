import type { ArtifactStore } from '@conveyor/artifacts';
import type { BuildJob, StageOutput } from '@conveyor/contracts';
import { collectReports, runBuildspecJob, storeArtifacts, type BuildspecRun } from '@conveyor/runner';
import type { BuildUser, BuildUsers } from '@conveyor/runner';
import { openStageLog, redeliveryNote, type Redis, type StageHandler, type StageOutcome } from '@conveyor/service-kit';

export interface BuildDeps {
  artifacts: ArtifactStore;
  redis: Redis;
  prefix: string;
  workDir: string;
  /** Who each build runs as (default: this service's own user). */
  users?: BuildUsers;
}

/**
 * The build stage: run the buildspec, then store `artifacts.files` and read `reports` (both even after a
 * failure, as CodeBuild does). The reports are counted, not gated on: the build's status is its phases'.
 */
export const buildJobHandler =
  (deps: BuildDeps): StageHandler<'build'> =>
  async (job, ctx) => {
    const log = openStageLog(deps.redis, deps.prefix, job.jobId);
    const again = redeliveryNote(ctx);
    if (again) log.write(again);
    try {
      const runAs = (user: BuildUser | undefined, stopUserProcesses: () => Promise<void>) =>
        runBuildspecJob(job, { artifacts: deps.artifacts, workDir: deps.workDir, log: (t) => log.write(t), signal: ctx.signal, ...(user ? { user } : {}), stopUserProcesses }, (run) => finishBuild(job, run, deps, (t) => log.write(t), ctx.signal, user));
      return await (deps.users ? deps.users.withUser(runAs) : runAs(undefined, async () => undefined));
    } finally {
      await log.close();
    }
  };

async function finishBuild(job: BuildJob, run: BuildspecRun, deps: BuildDeps, log: (t: string) => void, signal: AbortSignal, user: BuildUser | undefined): Promise<StageOutcome> {
  const output: StageOutput = {
    ...(run.phases ? { phases: run.phases.phases } : {}),
    ...(run.phases && Object.keys(run.phases.exportedVariables).length ? { exportedVariables: run.phases.exportedVariables } : {}),
  };
  // Stopped (cancelled, or the job taken from this worker): nothing is worth storing, nor reading.
  if (signal.aborted) return { status: 'FAILED', message: run.message ?? 'the build was stopped', output };
  const stored = await storeArtifact(job, run, deps, log, user, output, signal);
  return { ...stored, output: { ...stored.output, ...(await reportCounts(run, log, signal, user)) } };
}

/** Why a report problem or a failed case leaves a build as it was (CodeBuild: a build's status comes from its phases). */
const NOT_DECIDING = " (reports do not decide a build stage's status; a test stage's do)";

/**
 * The build's `reports`, read as the test stage reads them (the same log lines), counted in its result
 * but never gating it: a failed case, or a group that matches no file, is logged and the build stands.
 * A build stopped meanwhile reads no (further) report, and its result keeps no counts.
 */
async function reportCounts(run: BuildspecRun, log: (t: string) => void, signal: AbortSignal, user: BuildUser | undefined): Promise<Pick<StageOutput, 'tests' | 'failedTests'>> {
  const reports = await collectReports(run, log, { ...(user ? { user } : {}), signal, problemNote: NOT_DECIDING });
  if (reports.kind !== 'read') return {};
  const { tests, failedTests } = reports;
  if (tests.failed > 0) log(`[conveyor] reports: ${tests.failed} of ${tests.total} tests failed${NOT_DECIDING}\n`);
  return { tests, ...(failedTests.length ? { failedTests } : {}) };
}

/** Stores `artifacts.files` (when the buildspec has them): a failed upload fails the build, saying why. */
async function storeArtifact(job: BuildJob, run: BuildspecRun, deps: BuildDeps, log: (t: string) => void, user: BuildUser | undefined, output: StageOutput, signal: AbortSignal): Promise<StageOutcome & { output: StageOutput }> {
  const stored = await storeArtifacts(job, run, { artifacts: deps.artifacts, log, signal, ...(user ? { user } : {}) });
  if (stored.kind === 'failed') return { status: 'FAILED', message: run.message ? `${run.message}; ${stored.message}` : stored.message, output };
  return { status: run.status, ...(run.message ? { message: run.message } : {}), output: stored.kind === 'stored' ? { ...output, artifact: stored.artifact } : output };
}
