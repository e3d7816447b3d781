import { execFile } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { promisify } from 'node:util';
import { chmod, chown, mkdir, readdir, readFile, realpath, rm, stat, writeFile } from 'node:fs/promises';
import { join, resolve, sep } from 'node:path';
import { ArtifactContentError, type ArtifactStore } from '@conveyor/artifacts';
import type { BuildJob, TestJob } from '@conveyor/contracts';
import { runPhases, type PhasesResult, type RunnerEvent } from './bash-session.js';
import { fileOwner, readOwnedFile, UntrustedFileError } from './safe-files.js';
import { BuildspecError, MAX_BUILDSPEC_BYTES, notices, parseBuildspec, unsupportedFeatures, type Buildspec } from './buildspec.js';
import { codebuildEnv } from './codebuild-env.js';
import { processIsOurs } from '@conveyor/procfs';
import { currentOwner, reapOrphans, type ProcessOwner } from './orphans.js';
import { environmentProblem, type BuildUser } from './shell-process.js';

const exec = promisify(execFile);

export interface BuildspecJobDeps {
  artifacts: ArtifactStore;
  /** Each job gets a fresh directory under here, removed when the job ends. */
  workDir: string;
  log: (text: string) => void;
  signal: AbortSignal;
  now?: () => Date;
  home?: string;
  /** Run the build as this user (see resolveBuildUsers); the job's files are handed to it first, and no other user may enter them. */
  user?: BuildUser;
  /** Kills everything still running as `user` (BuildUsers' `stopAll`): called once the shell has ended, before root reads or removes the job's files. */
  stopUserProcesses?: () => Promise<void>;
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
  const suffix = randomUUID().slice(0, 8);
  const dir = join(resolve(deps.workDir), `${job.jobId}-${suffix}`);
  // TMPDIR is kept short: a Unix socket's path (Python's multiprocessing makes some there) has ~107 bytes.
  const tmpDir = deps.user ? tmpDirOf(resolve(deps.workDir), suffix) : undefined;
  const shmDir = deps.user ? shmDirOf(resolve(deps.workDir), suffix) : undefined;
  const workspace = join(dir, 'src');
  // Names the live worker that owns the job directory, so a successor can tell an abandoned one.
  await mkdir(resolve(deps.workDir), { recursive: true });
  await writeFile(`${dir}.owner`, JSON.stringify(currentOwner()));
  // 0700 from the start: nobody but root (and, once handed over, the build's user) enters it, even
  // while root extracts the input and hands it over.
  await mkdir(dir, { mode: 0o700 });
  await mkdir(workspace);
  try {
    deps.log(`[conveyor] ${job.type} ${job.pipeline}/${job.stage} attempt ${job.attempt}, commit ${job.commit}${deps.user ? `, as uid ${deps.user.uid}` : ''}\n`);
    try {
      await deps.artifacts.extractTo(job.input, workspace);
    } catch (err) {
      // Content that cannot be unpacked fails the stage once, saying why; other errors are retried.
      if (!(err instanceof ArtifactContentError)) throw err;
      deps.log(`[conveyor] ${err.message}\n`);
      return await then({ status: 'FAILED', message: err.message, workspace });
    }
    const home = deps.user ? join(dir, 'home') : (deps.home ?? process.env.HOME ?? dir);
    // A build with a user of its own gets its own HOME and TMPDIR too, out of other builds' reach (a
    // file made in the shared /tmp is readable by all, with the usual umask).
    if (deps.user) {
      await mkdir(home);
      await exec('chown', ['-R', '--no-dereference', `${deps.user.uid}:${deps.user.gid}`, dir]);
      await chmod(dir, 0o700);
      for (const own of [tmpDir!, shmDir!]) {
        await mkdir(own, { mode: 0o700 });
        await chown(own, deps.user.uid, deps.user.gid);
      }
    }
    const spec = await loadBuildspec(workspace, job.buildspec, deps.user);
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
      home,
      ...(tmpDir ? { tmpDir } : {}),
      startTime: now().getTime(),
      uuid: randomUUID(),
      buildspecVariables: spec.spec.env?.variables ?? {},
      stageVariables: job.env.variables,
    });
    // An environment no shell can be given fails the build once, with the reason (not a retried error).
    const problem = environmentProblem(env, 16 * 1024);
    if (problem) {
      deps.log(`[conveyor] ${problem}\n`);
      return await then({ status: 'FAILED', message: problem, workspace });
    }
    const phases = await runPhases(spec.spec, {
      workspace,
      env,
      onOutput: deps.log,
      onEvent: (e) => deps.log(describeEvent(e)),
      timeoutMs: job.timeoutMinutes * 60_000,
      signal: deps.signal,
      controlDir: `${dir}.ctl`,
      ...(deps.user ? { user: deps.user } : {}),
      ...(tmpDir ? { tmpDir } : {}),
      ...(shmDir ? { shmDir } : {}),
    });
    // Nothing of the build's may run on while root reads, copies and removes its files (swapping a path
    // for a symlink under root's feet).
    await deps.stopUserProcesses?.();
    const status = phases.status === 'SUCCEEDED' ? 'SUCCEEDED' : 'FAILED';
    deps.log(`[conveyor] phases ${phases.status}${phases.message ? `: ${phases.message}` : ''}\n`);
    return await then({ status, ...(phases.message ? { message: phases.message } : {}), workspace, spec: spec.spec, phases });
  } finally {
    // GNU rm, not a path walk of ours: it does not follow a symlink a build's process swaps in meanwhile.
    if (await removeTrees(dir, `${dir}.ctl`, tmpDirOf(resolve(deps.workDir), suffix), shmDirOf(resolve(deps.workDir), suffix))) await rm(`${dir}.owner`, { force: true });
  }
}

/** Removes directory trees a build's (or a deployed version's) user may own, staying on their file system and never following a symlink. */
export async function removeTrees(...paths: string[]): Promise<boolean> {
  // What rm cannot remove (a mount point the build made) stays, and must not replace the job's outcome:
  // false, and the caller keeps the owner file, so a later start-up tries again.
  return exec('rm', ['-rf', '--one-file-system', '--', ...paths]).then(
    () => true,
    () => false,
  );
}

/** A job's TMPDIR: `<workDir>/t-<the job directory's suffix>`. */
function tmpDirOf(workDir: string, suffix: string): string {
  return join(workDir, `t-${suffix}`);
}

/** A job's /dev/shm, where namespaces can be made: `<workDir>/m-<the job directory's suffix>`. */
function shmDirOf(workDir: string, suffix: string): string {
  return join(workDir, `m-${suffix}`);
}

/**
 * After a crash: kill the shells a dead worker left (see reapOrphans) and remove their job
 * directories. Job directories of live workers sharing `workDir` are left alone.
 */
export async function cleanAbandonedJobs(workDir: string): Promise<{ killed: number[]; removed: string[]; strays?: number }> {
  const root = resolve(workDir);
  const report = await reapOrphans(root);
  const removed: string[] = [];
  // A worker can die before its shell starts or after it ended (unpacking, uploading): its
  // directory then has no shell record, only the owner file.
  for (const name of await readdir(root).catch(() => [] as string[])) {
    if (!name.endsWith('.owner')) continue;
    const owner = await readOwner(join(root, name));
    // Unreadable: a worker killed while writing it (gone), or one writing it right now (leave it be).
    if (owner === undefined ? await writtenWithin(join(root, name), 10_000) : processIsOurs(owner)) continue;
    const jobDir = join(root, name.slice(0, -'.owner'.length));
    if (!(await removeTrees(jobDir, `${jobDir}.ctl`, `${jobDir}.staging`, tmpDirOf(root, jobDir.slice(-8)), shmDirOf(root, jobDir.slice(-8))))) continue;
    await rm(join(root, name), { force: true });
    removed.push(jobDir);
  }
  return { killed: report.killed, removed, ...(report.strays ? { strays: report.strays } : {}) };
}

/** An owner file's owner, or undefined when the file is missing, truncated or not an owner record. */
async function readOwner(path: string): Promise<ProcessOwner | undefined> {
  try {
    const owner = JSON.parse(await readFile(path, 'utf8')) as Partial<ProcessOwner> | null;
    return Number.isInteger(owner?.pid) ? (owner as ProcessOwner) : undefined;
  } catch {
    return undefined;
  }
}

async function writtenWithin(path: string, ms: number): Promise<boolean> {
  const info = await stat(path).catch(() => undefined);
  return info !== undefined && Date.now() - info.mtimeMs < ms;
}

async function loadBuildspec(workspace: string, path: string, user: BuildUser | undefined): Promise<{ spec: Buildspec } | { error: string }> {
  const file = resolve(workspace, path);
  // Inside the source by its resolved path: a name such as `..ci.yml` is one.
  if (!file.startsWith(workspace + sep)) return { error: `buildspec path ${path} is outside the source` };
  const info = await stat(file).catch(() => undefined);
  if (!info?.isFile()) return { error: `buildspec ${path} not found in the source` };
  // A symlink may not lead the read outside the workspace.
  const real = await realpath(file);
  if (!real.startsWith((await realpath(workspace)) + sep)) return { error: `buildspec ${path} links outside the source` };
  if (info.size > MAX_BUILDSPEC_BYTES) return { error: `buildspec ${path} is larger than 1 MiB` };
  try {
    // Read as a file of the build's user, never through a symlink or FIFO swapped in meanwhile.
    const text = (await readOwnedFile(real, { owner: fileOwner(user), maxBytes: MAX_BUILDSPEC_BYTES, name: `buildspec ${path}` })).toString('utf8');
    const spec = parseBuildspec(text);
    const unsupported = unsupportedFeatures(spec);
    if (unsupported.length) return { error: `buildspec ${path} uses what Conveyor does not support yet: ${unsupported.join('; ')}` };
    return { spec };
  } catch (err) {
    if (err instanceof BuildspecError) return { error: `buildspec ${path} is invalid: ${err.message}` };
    if (err instanceof UntrustedFileError) return { error: err.message };
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
