import { randomUUID } from 'node:crypto';
import { mkdir, readFile, realpath, rm, stat } from 'node:fs/promises';
import { join, relative, resolve, sep } from 'node:path';
import type { ArtifactStore } from '@conveyor/artifacts';
import type { BuildJob, TestJob } from '@conveyor/contracts';
import { runPhases, type PhasesResult, type RunnerEvent } from './bash-session.js';
import { BuildspecError, MAX_BUILDSPEC_BYTES, notices, parseBuildspec, unsupportedFeatures, type Buildspec } from './buildspec.js';
import { codebuildEnv } from './codebuild-env.js';
import { reapOrphans } from './orphans.js';

export interface BuildspecJobDeps {
  artifacts: ArtifactStore;
  /** Each job gets a fresh directory under here, removed when the job ends. */
  workDir: string;
  log: (text: string) => void;
  signal: AbortSignal;
  now?: () => Date;
  home?: string;
}

/** A buildspec job that ran (or could not start: then `spec`/`phases` are absent and `message` says why). */
export interface BuildspecRun {
  status: 'SUCCEEDED' | 'FAILED';
  message?: string;
  workspace: string;
  spec?: Buildspec;
  phases?: PhasesResult;
}

/**
 * What the build and test stages share: unpack the input artifact, read and check the buildspec
 * (confined to the workspace), and run its phases with CodeBuild's variables. `then` runs on the
 * workspace before it is removed (artifact upload, reports), even when the phases failed.
 */
export async function runBuildspecJob<T>(job: BuildJob | TestJob, deps: BuildspecJobDeps, then: (run: BuildspecRun) => Promise<T>): Promise<T> {
  const dir = join(resolve(deps.workDir), `${job.jobId}-${randomUUID().slice(0, 8)}`);
  const workspace = join(dir, 'src');
  await mkdir(workspace, { recursive: true });
  try {
    deps.log(`[conveyor] ${job.type} ${job.pipeline}/${job.stage} attempt ${job.attempt}, commit ${job.commit}\n`);
    await deps.artifacts.extractTo(job.input, workspace);
    const spec = await loadBuildspec(workspace, job.buildspec);
    if ('error' in spec) {
      deps.log(`[conveyor] ${spec.error}\n`);
      return await then({ status: 'FAILED', message: spec.error, workspace });
    }
    for (const line of notices(spec.spec)) deps.log(`[conveyor] notice: ${line}\n`);
    const now = deps.now ?? (() => new Date());
    const env = codebuildEnv({
      runId: job.runId,
      pipeline: job.pipeline,
      stage: job.stage,
      buildNumber: job.runNumber,
      commit: job.commit,
      repository: job.repository,
      ref: job.trigger.ref,
      trigger: job.trigger,
      srcDir: workspace,
      home: deps.home ?? process.env.HOME ?? dir,
      startTime: now().getTime(),
      uuid: randomUUID(),
      buildspecVariables: spec.spec.env?.variables ?? {},
      stageVariables: job.env.variables,
    });
    const phases = await runPhases(spec.spec, {
      workspace,
      env,
      onOutput: deps.log,
      onEvent: (e) => deps.log(describeEvent(e)),
      timeoutMs: job.timeoutMinutes * 60_000,
      signal: deps.signal,
      controlDir: `${dir}.ctl`,
    });
    const status = phases.status === 'SUCCEEDED' ? 'SUCCEEDED' : 'FAILED';
    deps.log(`[conveyor] phases ${phases.status}${phases.message ? `: ${phases.message}` : ''}\n`);
    return await then({ status, ...(phases.message ? { message: phases.message } : {}), workspace, spec: spec.spec, phases });
  } finally {
    await Promise.all([rm(dir, { recursive: true, force: true }), rm(`${dir}.ctl`, { recursive: true, force: true })]);
  }
}

/**
 * After a crash: kill the shells a dead worker left (see reapOrphans) and remove their job
 * directories. Job directories of live workers sharing `workDir` are left alone.
 */
export async function cleanAbandonedJobs(workDir: string): Promise<{ killed: number[]; removed: string[] }> {
  const report = await reapOrphans(resolve(workDir));
  const removed: string[] = [];
  for (const ctl of report.removed) {
    const jobDir = ctl.replace(/\.ctl$/, '');
    await rm(jobDir, { recursive: true, force: true });
    removed.push(jobDir);
  }
  return { killed: report.killed, removed };
}

async function loadBuildspec(workspace: string, path: string): Promise<{ spec: Buildspec } | { error: string }> {
  const file = resolve(workspace, path);
  if (relative(workspace, file).startsWith('..') || !file.startsWith(workspace + sep)) return { error: `buildspec path ${path} is outside the source` };
  const info = await stat(file).catch(() => undefined);
  if (!info?.isFile()) return { error: `buildspec ${path} not found in the source` };
  // A symlink may not lead the read outside the workspace.
  const real = await realpath(file);
  if (!real.startsWith((await realpath(workspace)) + sep)) return { error: `buildspec ${path} links outside the source` };
  if (info.size > MAX_BUILDSPEC_BYTES) return { error: `buildspec ${path} is larger than 1 MiB` };
  try {
    const spec = parseBuildspec(await readFile(real, 'utf8'));
    const unsupported = unsupportedFeatures(spec);
    if (unsupported.length) return { error: `buildspec ${path} uses what Conveyor does not support yet: ${unsupported.join('; ')}` };
    return { spec };
  } catch (err) {
    if (err instanceof BuildspecError) return { error: `buildspec ${path} is invalid: ${err.message}` };
    throw err;
  }
}

function describeEvent(e: RunnerEvent): string {
  switch (e.type) {
    case 'phase-start':
      return `[conveyor] phase ${e.phase}${e.attempt > 1 ? ` (attempt ${e.attempt})` : ''}\n`;
    case 'phase-end':
      return `[conveyor] phase ${e.phase} ${e.status} in ${e.durationMs} ms${e.message ? `: ${e.message}` : ''}\n`;
    case 'command-start':
      return `[conveyor] $ ${e.command.split('\n')[0]}\n`;
    case 'command-end':
      return e.exitCode === 0 ? '' : `[conveyor] exit status ${e.exitCode}\n`;
    case 'notice':
      return `[conveyor] ${e.message}\n`;
    default: {
      const never: never = e;
      return String(never);
    }
  }
}
