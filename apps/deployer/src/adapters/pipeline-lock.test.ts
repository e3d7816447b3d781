import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { chmod, lstat, mkdir, mkdtemp, readdir, rm, stat, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { checkSetpriv } from '@conveyor/runner';
import { checkLockTool, pipelineLockPath, withPipelineLock } from './pipeline-lock.js';

let dir: string;
const children: ChildProcess[] = [];
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'cv-lock-'));
});
afterEach(async () => {
  children.splice(0).forEach((c) => c.kill('SIGKILL'));
  await rm(dir, { recursive: true, force: true });
});

const LOCK_MODULE = new URL('./pipeline-lock.ts', import.meta.url).pathname;

/** Another deployer process: takes the lock, says so, and holds it until killed. */
async function otherDeployer(): Promise<ChildProcess> {
  const script = `import { withPipelineLock } from ${JSON.stringify(LOCK_MODULE)};
await withPipelineLock(process.argv[1], 'shop', async () => { process.stdout.write('held\\n'); await new Promise(() => {}); });`;
  const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script, dir], { stdio: ['ignore', 'pipe', 'inherit'] });
  children.push(child);
  await new Promise<void>((resolve, reject) => {
    child.stdout!.once('data', () => resolve());
    child.once('exit', (code) => reject(new Error(`the other deployer exited (${code}) before taking the lock`)));
  });
  return child;
}

/** Whether any process holds the kernel lock on the pipeline's lock file now. */
const lockFree = () => spawnSync('flock', ['--nonblock', '--exclusive', pipelineLockPath(dir, 'shop'), 'true']).status === 0;

describe('withPipelineLock', () => {
  it('runs one deploy of a pipeline at a time within a process', async () => {
    const order: string[] = [];
    const slow = withPipelineLock(dir, 'shop', async () => {
      order.push('a start');
      await new Promise((r) => setTimeout(r, 100));
      order.push('a end');
    });
    const next = withPipelineLock(dir, 'shop', async () => void order.push('b'));
    await Promise.all([slow, next]);
    expect(order).toEqual(['a start', 'a end', 'b']);
    expect(lockFree()).toBe(true);
  });

  it('holds the lock against other processes while it runs, and releases it after, even when fn throws', async () => {
    await expect(
      withPipelineLock(dir, 'shop', async () => {
        expect(lockFree()).toBe(false);
        throw new Error('deploy failed');
      }),
    ).rejects.toThrow('deploy failed');
    expect(lockFree()).toBe(true);
  });

  it('ignores a lock file nobody holds (left by a crash), and removes the one earlier deployers kept in the pipeline directory', async () => {
    await withPipelineLock(dir, 'shop', async () => undefined);
    await writeFile(pipelineLockPath(dir, 'shop'), JSON.stringify({ pid: 1, procStart: '1', token: 'theirs' }));
    await mkdir(join(dir, 'shop'));
    await writeFile(join(dir, 'shop', '.lock'), '');
    expect(await withPipelineLock(dir, 'shop', async () => 'ran')).toBe('ran');
    await expect(stat(join(dir, 'shop', '.lock'))).rejects.toThrow(/ENOENT/);
  });

  it('waits for a live owner in another process, saying whom it waits for once, until aborted', async () => {
    const owner = await otherDeployer();
    const heard: (number | undefined)[] = [];
    const abort = new AbortController();
    let ran = false;
    const waiting = withPipelineLock(dir, 'shop', async () => void (ran = true), { waitNoticeMs: 10, signal: abort.signal, onWait: (holder) => heard.push(holder) });
    await new Promise((r) => setTimeout(r, 300));
    abort.abort(new Error('shutting down'));
    await expect(waiting).rejects.toThrow('shutting down');
    expect(ran).toBe(false);
    expect(heard).toEqual([owner.pid]);
    // The abandoned wait left nothing behind: once the owner is gone, the lock is free.
    owner.kill('SIGKILL');
    await new Promise((r) => owner.once('exit', r));
    await expect.poll(lockFree, { timeout: 5000 }).toBe(true);
  });

  it('stops waiting behind a deploy of this process when aborted, and the next one still waits its turn', async () => {
    const order: string[] = [];
    let finish!: () => void;
    const first = withPipelineLock(dir, 'shop', async () => {
      order.push('a start');
      await new Promise<void>((r) => (finish = r));
      order.push('a end');
    });
    await expect.poll(() => order.length).toBe(1);
    const abort = new AbortController();
    const second = withPipelineLock(dir, 'shop', async () => void order.push('b'), { signal: abort.signal });
    const third = withPipelineLock(dir, 'shop', async () => void order.push('c'));
    setTimeout(() => abort.abort(new Error('run cancelled')), 50);
    // Not after the first deploy's end (its whole health wait, in life): at once.
    await expect(second).rejects.toThrow('run cancelled');
    expect(order).toEqual(['a start']);
    finish();
    await Promise.all([first, third]);
    expect(order).toEqual(['a start', 'a end', 'c']);
  });

  it('makes its lock file 0600 in a 0700 directory of its own, and tightens one left wider there', async () => {
    const path = pipelineLockPath(dir, 'shop');
    await withPipelineLock(dir, 'shop', async () => undefined);
    expect((await stat(join(dir, '.locks'))).mode & 0o777).toBe(0o700);
    expect((await stat(path)).mode & 0o777).toBe(0o600);
    await chmod(path, 0o644);
    await withPipelineLock(dir, 'shop', async () => undefined);
    expect((await stat(path)).mode & 0o777).toBe(0o600);
  });

  it('refuses a lock directory others may enter, and a lock file that is a link, saying which', async () => {
    await withPipelineLock(dir, 'shop', async () => undefined);
    await chmod(join(dir, '.locks'), 0o755);
    await expect(withPipelineLock(dir, 'shop', async () => 'ran')).rejects.toThrow(/\.locks must be a directory of the deployer's user that nobody else may enter/);
    await chmod(join(dir, '.locks'), 0o700);
    const path = pipelineLockPath(dir, 'shop');
    await rm(path);
    await writeFile(join(dir, 'elsewhere'), '');
    await symlink(join(dir, 'elsewhere'), path);
    await expect(withPipelineLock(dir, 'shop', async () => 'ran')).rejects.toThrow(/deploy lock file .*shop\.lock.*symbolic link/);
    expect((await lstat(path)).isSymbolicLink()).toBe(true);
  });

  it('gets the lock as soon as its owner is killed with SIGKILL (no stale lock to judge)', async () => {
    const owner = await otherDeployer();
    let ran = false;
    const waiting = withPipelineLock(dir, 'shop', async () => {
      ran = true;
      return 'deployed';
    });
    await new Promise((r) => setTimeout(r, 200));
    expect(ran).toBe(false);
    owner.kill('SIGKILL');
    await expect(waiting).resolves.toBe('deployed');
  });

  it('keeps the lock through SIGINT/SIGTERM/SIGHUP to its holder, and says when the holder is killed for good', async () => {
    // flock (our child) runs the holding script, which execs cat: the holder is flock's child named cat.
    const childOf = (parent: number, name: string) => Number(spawnSync('pgrep', ['-P', String(parent), '-x', name], { encoding: 'utf8' }).stdout.trim().split('\n')[0]);
    const holderPid = () => childOf(childOf(process.pid, 'flock'), 'cat');
    await withPipelineLock(dir, 'shop', async (lock) => {
      const holder = holderPid();
      expect(holder).toBeGreaterThan(1);
      for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.kill(holder, sig);
      await new Promise((r) => setTimeout(r, 100));
      expect(lockFree()).toBe(false);
      expect(lock.lost()).toBe(false);
      process.kill(holder, 'SIGKILL');
      await expect.poll(() => lock.lost(), { timeout: 5000 }).toBe(true);
    });
    expect(lockFree()).toBe(true);
  });

  it('checks at start that flock(1) can run, and names what is missing when it cannot', () => {
    expect(() => checkLockTool()).not.toThrow();
    const path = process.env.PATH;
    process.env.PATH = dir; // an empty directory: no flock on this PATH
    try {
      expect(() => checkLockTool()).toThrow(/flock\(1\).*install util-linux/);
    } finally {
      process.env.PATH = path;
    }
  });
});

describe.runIf(process.getuid?.() === 0)('withPipelineLock, as root', () => {
  const NOBODY = 65_534;
  /** Runs `argv` as another user (a deployed version's, a build's), in a process group of its own. */
  const asNobody = (argv: string[]) =>
    spawn(checkSetpriv(), [`--reuid=${NOBODY}`, `--regid=${NOBODY}`, '--clear-groups', '--', ...argv], { detached: true, stdio: ['ignore', 'ignore', 'pipe'] });

  it("keeps its lock file out of other users' reach: none can take it and freeze the pipeline's deploys", async () => {
    // DEPLOY_DIR and the pipeline's directory as a root deployer leaves them: versions' users pass through.
    await chmod(dir, 0o711);
    await mkdir(join(dir, 'shop'), { mode: 0o711 });
    await withPipelineLock(dir, 'shop', async () => undefined);
    expect((await stat(pipelineLockPath(dir, 'shop'))).uid).toBe(0);
    // Every file the lock made, and the lock file's old place: another user tries to lock each, and holds what it gets.
    const entries = await readdir(dir, { recursive: true, withFileTypes: true });
    const files = entries.filter((e) => e.isFile()).map((e) => join(e.parentPath, e.name));
    expect(files).toContain(pipelineLockPath(dir, 'shop'));
    const holders = [...files, join(dir, 'shop', '.lock')].map((path) => {
      const child = asNobody(['flock', '--exclusive', path, 'sleep', '600']);
      children.push(child);
      let stderr = '';
      child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
      return new Promise<{ path: string; code: number | null; stderr: string }>((resolve) => child.once('exit', (code) => resolve({ path, code, stderr })));
    });
    try {
      const refused = await Promise.all(holders.map((h) => Promise.race([h, new Promise<undefined>((r) => setTimeout(() => r(undefined), 2000))])));
      // Each could not even open its file: none is left holding anything.
      // (undefined: still running after 2 s, so holding its lock.)
      for (const r of refused) expect(r).toMatchObject({ code: 66, stderr: expect.stringMatching(/cannot open lock file.*Permission denied/) });
      expect(await withPipelineLock(dir, 'shop', async () => 'ran', { signal: AbortSignal.timeout(5000) })).toBe('ran');
    } finally {
      for (const c of children) if (c.exitCode === null) process.kill(-c.pid!, 'SIGKILL');
    }
  });
});
