import { spawn, spawnSync } from 'node:child_process';
import { mkdir, mkdtemp, readFile, rm, stat, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it, onTestFinished } from 'vitest';
import { FsArtifactStore } from '@conveyor/artifacts';
import { BuildJob } from '@conveyor/contracts';
import { cleanAbandonedJobs, runBuildspecJob, type BuildspecRun } from './buildspec-job.js';
import { currentOwner, type ProcessOwner } from './orphans.js';

let work: string;
beforeEach(async () => {
  work = await mkdtemp(join(tmpdir(), 'cv-work-'));
});
afterEach(() => rm(work, { recursive: true, force: true }));

const exists = (p: string) => stat(p).then(() => true, () => false);

/** The pid of a process that has exited: a dead worker's. */
const deadPid = () => spawnSync('true').pid!;

/** The pid of a process that lives until the test ends: a live worker's. */
function livePid(): number {
  const live = spawn('sleep', ['30'], { stdio: 'ignore' });
  onTestFinished(() => void live.kill('SIGKILL'));
  return live.pid!;
}

async function jobDir(name: string, owner: ProcessOwner): Promise<string> {
  const dir = join(work, name);
  await mkdir(join(dir, 'src'), { recursive: true });
  await writeFile(join(dir, 'src', 'file'), 'x');
  await writeFile(`${dir}.owner`, JSON.stringify(owner));
  return dir;
}

describe('cleanAbandonedJobs', () => {
  it('removes the directories of workers that died, keeps those of live ones', async () => {
    const abandoned = await jobDir('run-a.Build.1-aaaa', { pid: deadPid() });
    const running = await jobDir('run-b.Build.1-bbbb', { pid: livePid() });
    const report = await cleanAbandonedJobs(work);
    expect(report.removed).toEqual([abandoned]);
    expect(await exists(abandoned)).toBe(false);
    expect(await exists(`${abandoned}.owner`)).toBe(false);
    expect(await exists(join(running, 'src', 'file'))).toBe(true);
  });

  it('removes the temporary and shared memory directories of a dead worker\'s job with it (t-/m-<suffix>), keeps a live one\'s', async () => {
    const abandoned = await jobDir('run-i.Build.1-0123abcd', { pid: deadPid() });
    const running = await jobDir('run-j.Build.1-4567cdef', { pid: livePid() });
    for (const suffix of ['0123abcd', '4567cdef']) {
      for (const kind of ['t', 'm']) {
        await mkdir(join(work, `${kind}-${suffix}`));
        await writeFile(join(work, `${kind}-${suffix}`, 'left'), 'x');
      }
    }
    const report = await cleanAbandonedJobs(work);
    expect(report.removed).toEqual([abandoned]);
    expect(await exists(join(work, 't-0123abcd'))).toBe(false);
    expect(await exists(join(work, 'm-0123abcd'))).toBe(false);
    expect(await exists(join(work, 't-4567cdef', 'left'))).toBe(true);
    expect(await exists(join(work, 'm-4567cdef', 'left'))).toBe(true);
    expect(await exists(join(running, 'src', 'file'))).toBe(true);
  });

  it('removes the directory of a worker whose owner file is truncated or not a record, and does not stop on it', async () => {
    const old = new Date(Date.now() - 60_000);
    const dirs = [];
    for (const [name, text] of [['run-e.Build.1-eeee', ''], ['run-f.Build.1-ffff', 'null'], ['run-g.Build.1-gggg', '{"pid":"x"}']] as const) {
      const dir = await jobDir(name, { pid: 0 });
      await writeFile(`${dir}.owner`, text);
      await utimes(`${dir}.owner`, old, old);
      dirs.push(dir);
    }
    // Truncated but just written: a live worker may be writing it; left alone.
    const fresh = await jobDir('run-h.Build.1-hhhh', { pid: 0 });
    await writeFile(`${fresh}.owner`, '');
    const report = await cleanAbandonedJobs(work);
    expect([...report.removed].sort()).toEqual(dirs.sort());
    expect(await exists(join(fresh, 'src', 'file'))).toBe(true);
  });

  it('removes the directory of an earlier worker that had this very pid (a restarted container), keeps its own', async () => {
    const me = currentOwner();
    const mine = await jobDir('run-c.Build.1-cccc', me);
    // Same pid, another process: the worker before a container restart, whose node was PID 1 too.
    const earlier = await jobDir('run-d.Build.1-dddd', { ...me, startTime: me.startTime === undefined ? undefined : `${me.startTime}0` });
    const report = await cleanAbandonedJobs(work);
    if (me.startTime !== undefined) expect(report.removed).toEqual([earlier]);
    expect(await exists(join(mine, 'src', 'file'))).toBe(true);
  });
});

const BUILD_JOB = JSON.parse(await readFile(new URL('../../contracts/fixtures/v1/stage-job.build.json', import.meta.url), 'utf8')) as object;

/** Runs `buildspec` as a build job (as this service's own user), as the build stage does; resolves with what `then` got. */
async function buildJob(name: string, buildspec: string): Promise<{ run: BuildspecRun; log: string }> {
  const artifacts = new FsArtifactStore(join(work, 'artifacts'));
  const src = join(work, `${name}-src`);
  await mkdir(src);
  await writeFile(join(src, 'buildspec.yml'), buildspec);
  const input = await artifacts.putFiles(`${name}.tar`, src, ['buildspec.yml']);
  const job = BuildJob.parse({ ...BUILD_JOB, jobId: `${name}.Build.1`, runId: name, input });
  let log = '';
  const run = await runBuildspecJob(job, { artifacts, workDir: join(work, 'jobs'), log: (t) => void (log += t), signal: new AbortController().signal }, async (r) => r);
  return { run, log };
}

describe('runBuildspecJob: a build whose shell cannot start where it used to fails, once, saying why', () => {
  it('a PATH the buildspec sets to literal text (no bash on it) does not keep the shell from starting: the command that needs PATH fails', async () => {
    const { run, log } = await buildJob(
      'path-run-0001',
      'version: 0.2\nenv:\n  variables:\n    PATH: "$HOME/.local/bin:$PATH"\nphases:\n  build:\n    commands:\n      - echo "PATH is $PATH"\n      - ls\n',
    );
    expect(run.status, log).toBe('FAILED');
    expect(run.message).toBe('phases.build.commands[1] exited with code 127: ls');
    expect(log).toContain('PATH is $HOME/.local/bin:$PATH\n');
    expect(log).toMatch(/ls: command not found/);
  });

  it('a command that removes the workspace and ends the shell: finally and post_build fail (the fresh shell cannot enter it), the build is FAILED', async () => {
    const { run, log } = await buildJob(
      'gone-run-0001',
      'version: 0.2\nphases:\n  build:\n    commands:\n      - cd / && rm -rf "$CODEBUILD_SRC_DIR" && exit 3\n    finally:\n      - echo finally-ran\n  post_build:\n    commands:\n      - echo post-ran\n',
    );
    expect(run.status, log).toBe('FAILED');
    expect(run.message).toBe('phases.build.commands[0] exited the shell with code 3: cd / && rm -rf "$CODEBUILD_SRC_DIR" && exit 3');
    expect(run.phases?.phases.map((p) => p.status)).toEqual(['FAILED', 'FAILED']);
    expect(run.phases?.phases[1]?.message).toMatch(
      /^phases\.post_build\.commands\[0\] did not run, as the build shell could not be started \(it could not enter the workspace \S+\/src: removed, or replaced by the build\): echo post-ran$/,
    );
    expect(log).toMatch(/\[conveyor\] the build shell could not be started: it could not enter the workspace \S+\/src: removed, or replaced by the build\n/);
    expect(log).not.toMatch(/^(finally|post)-ran$/m);
  });

  it.each([
    ['replaces the workspace with a file', 'cd / && rm -rf "$CODEBUILD_SRC_DIR" && touch "$CODEBUILD_SRC_DIR" && exit 3'],
    ['replaces the workspace with a link that loops', 'cd / && rm -rf "$CODEBUILD_SRC_DIR" && ln -s "$CODEBUILD_SRC_DIR" "$CODEBUILD_SRC_DIR" && exit 3'],
  ])('a command that %s and ends the shell fails the build once, saying why (Node refuses such a working directory at once)', async (_case, command) => {
    const { run, log } = await buildJob('swap-run-0001', `version: 0.2\nphases:\n  build:\n    commands:\n      - '${command}'\n  post_build:\n    commands:\n      - echo post-ran\n`);
    expect(run.status, log).toBe('FAILED');
    expect(run.phases?.phases[1]?.message).toMatch(/did not run, as the build shell could not be started \(it could not enter the workspace \S+\/src: removed, or replaced by the build\): echo post-ran$/);
  });
});

