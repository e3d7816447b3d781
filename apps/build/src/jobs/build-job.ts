import { mkdir, rm } from 'node:fs/promises';
import { dirname } from 'node:path';
import { artifactKey, type ArtifactStore } from '@conveyor/artifacts';
import type { BuildJob } from '@conveyor/contracts';
import { fileSelection, resolveFiles, runBuildspecJob, stageFiles, type BuildspecRun } from '@conveyor/runner';
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

/** The build stage: run the buildspec, then store `artifacts.files` (attempted even after a failure, as CodeBuild does). */
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
  const output: StageOutcome['output'] = {
    ...(run.phases ? { phases: run.phases.phases } : {}),
    ...(run.phases && Object.keys(run.phases.exportedVariables).length ? { exportedVariables: run.phases.exportedVariables } : {}),
  };
  const section = run.spec?.artifacts;
  // Stopped (cancelled, or the job taken from this worker): nothing is worth storing.
  if (signal.aborted) return { status: 'FAILED', message: run.message ?? 'the build was stopped', output };
  if (!section) return { status: run.status, ...(run.message ? { message: run.message } : {}), output };
  // Packed from a directory of ours beside the job directory, never from inside it: the job directory
  // and the workspace belong to the build's user, who may have left symlinks or FIFOs anywhere there.
  const staging = `${dirname(run.workspace)}.staging`;
  try {
    const files = await resolveFiles(run.workspace, { ...fileSelection(section, 'artifacts'), allowEmpty: run.status === 'FAILED' });
    await mkdir(staging, { mode: 0o700 }); // not recursive: fails if anything is there already
    await stageFiles(files, staging, user);
    const artifact = await deps.artifacts.putFiles(artifactKey(job.runId, job.stage, job.attempt), staging, files.entries.map((e) => e.name));
    log(`[conveyor] stored artifact ${artifact.key}: ${files.entries.length} files, ${artifact.bytes} bytes\n`);
    return { status: run.status, ...(run.message ? { message: run.message } : {}), output: { ...output, artifact } };
  } catch (err) {
    const message = `artifact upload failed: ${(err as Error).message}`;
    log(`[conveyor] ${message}\n`);
    return { status: 'FAILED', message: run.message ? `${run.message}; ${message}` : message, output };
  } finally {
    await rm(staging, { recursive: true, force: true });
  }
}
