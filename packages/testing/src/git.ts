import { execFile } from 'node:child_process';
import { mkdir } from 'node:fs/promises';
import { promisify } from 'node:util';
import { writeFiles } from './files.js';

const exec = promisify(execFile);

const GIT_ENV = {
  GIT_AUTHOR_NAME: 'Conveyor Test',
  GIT_AUTHOR_EMAIL: 'test@conveyor.invalid',
  GIT_COMMITTER_NAME: 'Conveyor Test',
  GIT_COMMITTER_EMAIL: 'test@conveyor.invalid',
};

export async function git(cwd: string, ...args: string[]): Promise<string> {
  const { stdout } = await exec('git', args, { cwd, env: { ...process.env, ...GIT_ENV } });
  return stdout.trim();
}

/** A real git repository on disk, initialised on `branch`. */
export async function initRepo(dir: string, branch = 'main'): Promise<string> {
  await mkdir(dir, { recursive: true });
  await git(dir, 'init', '-q', '-b', branch);
  return dir;
}

/** Writes the files (path → content) and commits them; returns the new commit sha. */
export async function commitFiles(dir: string, files: Record<string, string>, message = 'change'): Promise<string> {
  await writeFiles(dir, files);
  await git(dir, 'add', '-A');
  await git(dir, 'commit', '-q', '-m', message);
  return git(dir, 'rev-parse', 'HEAD');
}
