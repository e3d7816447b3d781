import { mkdir, rm } from 'node:fs/promises';
import { dirname } from 'node:path';
import { artifactKey, type ArtifactStore } from '@conveyor/artifacts';
import type { ArtifactRef, BuildJob, TestJob } from '@conveyor/contracts';
import type { BuildspecRun } from './buildspec-job.js';
import { fileSelection, resolveFiles, stageFiles } from './globs.js';
import type { BuildUser } from './shell-process.js';

/** What storing a buildspec's `artifacts` came to: the artifact, or why it could not be stored. */
export type StoredArtifacts = { kind: 'none' } | { kind: 'stored'; artifact: ArtifactRef } | { kind: 'failed'; message: string };

/**
 * Stores the buildspec's `artifacts.files` (when it has them) as the stage's artifact, as CodeBuild
 * uploads them: after the phases, even after a failure (which may then match no file). Packed from a
 * directory of ours beside the job directory, never from inside it: the job directory and the workspace
 * belong to the build's user, who may have left symlinks or FIFOs anywhere there. An abort of `signal`
 * (the run cancelled) stops it between files, and the packing midway: nothing is kept.
 */
export async function storeArtifacts(
  job: BuildJob | TestJob,
  run: BuildspecRun,
  deps: { artifacts: ArtifactStore; log: (t: string) => void; user?: BuildUser; signal?: AbortSignal },
): Promise<StoredArtifacts> {
  const section = run.spec?.artifacts;
  if (!section) return { kind: 'none' };
  const staging = `${dirname(run.workspace)}.staging`;
  const { signal } = deps;
  try {
    signal?.throwIfAborted();
    const files = await resolveFiles(run.workspace, { ...fileSelection(section, 'artifacts'), allowEmpty: run.status === 'FAILED' });
    await mkdir(staging, { mode: 0o700 }); // not recursive: fails if anything is there already
    await stageFiles(files, staging, deps.user, signal);
    const artifact = await deps.artifacts.putFiles(artifactKey(job.runId, job.stage, job.attempt), staging, files.entries.map((e) => e.name), signal ? { signal } : {});
    deps.log(`[conveyor] stored artifact ${artifact.key}: ${files.entries.length} files, ${artifact.bytes} bytes\n`);
    return { kind: 'stored', artifact };
  } catch (err) {
    const message = signal?.aborted ? `artifact upload stopped: ${stopReason(signal)}` : `artifact upload failed: ${(err as Error).message}`;
    deps.log(`[conveyor] ${message}\n`);
    return { kind: 'failed', message };
  } finally {
    await rm(staging, { recursive: true, force: true });
  }
}

/** Why a stage was stopped, as its log says it. */
function stopReason(signal: AbortSignal): string {
  const reason: unknown = signal.reason;
  if (typeof reason === 'string') return reason;
  return reason instanceof Error ? reason.message : 'the stage was stopped';
}
