import { cp, mkdir } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { artifactKey, type ArtifactStore } from '@conveyor/artifacts';
import type { BuildJob } from '@conveyor/contracts';
import { fileSelection, resolveFiles, runBuildspecJob, type BuildspecRun } from '@conveyor/runner';
import type { BuildUser, BuildUsers } from '@conveyor/runner';
import { openStageLog, type Redis, type StageHandler, type StageOutcome } from '@conveyor/service-kit';

export interface BuildDeps {
  artifacts: ArtifactStore;
  redis: Redis;
  prefix: string;
  workDir: string;
  /** Who each build runs as (default: this service's own user). */
  users?: BuildUsers;
}

/** The build stage: run the buildspec, then store `artifacts.files` (attempted even after a failure, as CodeBuild does). */
export const buildJobHandler =
  (deps: BuildDeps): StageHandler<'build'> =>
  async (job, ctx) => {
    const log = openStageLog(deps.redis, deps.prefix, job.jobId);
    if (ctx.deliveries > 0) log.write(`[conveyor] delivery ${ctx.deliveries + 1} of this job (an earlier worker stopped before finishing)\n`);
    try {
      const runAs = (user: BuildUser | undefined) =>
        runBuildspecJob(job, { artifacts: deps.artifacts, workDir: deps.workDir, log: (t) => log.write(t), signal: ctx.signal, ...(user ? { user } : {}) }, (run) => finishBuild(job, run, deps, (t) => log.write(t), ctx.signal));
      return await (deps.users ? deps.users.withUser(runAs) : runAs(undefined));
    } finally {
      await log.close();
    }
  };

async function finishBuild(job: BuildJob, run: BuildspecRun, deps: BuildDeps, log: (t: string) => void, signal: AbortSignal): Promise<StageOutcome> {
  const output: StageOutcome['output'] = {
    ...(run.phases ? { phases: run.phases.phases } : {}),
    ...(run.phases && Object.keys(run.phases.exportedVariables).length ? { exportedVariables: run.phases.exportedVariables } : {}),
  };
  const section = run.spec?.artifacts;
  // Stopped (cancelled, or the job taken from this worker): nothing is worth storing.
  if (signal.aborted) return { status: 'FAILED', message: run.message ?? 'the build was stopped', output };
  if (!section) return { status: run.status, ...(run.message ? { message: run.message } : {}), output };
  try {
    const files = await resolveFiles(run.workspace, { ...fileSelection(section, 'artifacts'), allowEmpty: run.status === 'FAILED' });
    let base = files.base;
    if (files.entries.some((e) => e.name !== e.path)) {
      // discard-paths: lay the files out under their artifact names first.
      base = join(dirname(run.workspace), 'artifact-staging');
      for (const e of files.entries) {
        await mkdir(dirname(join(base, e.name)), { recursive: true });
        await cp(join(files.base, e.path), join(base, e.name), { verbatimSymlinks: true });
      }
    }
    const artifact = await deps.artifacts.putFiles(artifactKey(job.runId, job.stage, job.attempt), base, files.entries.map((e) => e.name));
    log(`[conveyor] stored artifact ${artifact.key}: ${files.entries.length} files, ${artifact.bytes} bytes\n`);
    return { status: run.status, ...(run.message ? { message: run.message } : {}), output: { ...output, artifact } };
  } catch (err) {
    const message = `artifact upload failed: ${(err as Error).message}`;
    log(`[conveyor] ${message}\n`);
    return { status: 'FAILED', message: run.message ? `${run.message}; ${message}` : message, output };
  }
}
