import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { checkLockTool, withPipelineLock } from './pipeline-lock.js';

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
await withPipelineLock(process.argv[1], async () => { process.stdout.write('held\\n'); await new Promise(() => {}); });`;
  const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script, dir], { stdio: ['ignore', 'pipe', 'inherit'] });
  children.push(child);
  await new Promise<void>((resolve, reject) => {
    child.stdout!.once('data', () => resolve());
    child.once('exit', (code) => reject(new Error(`the other deployer exited (${code}) before taking the lock`)));
  });
  return child;
}

/** Whether any process holds the kernel lock on the pipeline's lock file now. */
const lockFree = () => spawnSync('flock', ['--nonblock', '--exclusive', join(dir, '.lock'), 'true']).status === 0;

describe('withPipelineLock', () => {
  it('runs one deploy of a pipeline at a time within a process', async () => {
    const order: string[] = [];
    const slow = withPipelineLock(dir, async () => {
      order.push('a start');
      await new Promise((r) => setTimeout(r, 100));
      order.push('a end');
    });
    const next = withPipelineLock(dir, async () => void order.push('b'));
    await Promise.all([slow, next]);
    expect(order).toEqual(['a start', 'a end', 'b']);
    expect(lockFree()).toBe(true);
  });

  it('holds the lock against other processes while it runs, and releases it after, even when fn throws', async () => {
    await expect(
      withPipelineLock(dir, async () => {
        expect(lockFree()).toBe(false);
        throw new Error('deploy failed');
      }),
    ).rejects.toThrow('deploy failed');
    expect(lockFree()).toBe(true);
  });

  it('ignores a lock file nobody holds (left by a crash, or by an earlier version of the deployer)', async () => {
    await writeFile(join(dir, '.lock'), JSON.stringify({ pid: 1, procStart: '1', token: 'theirs' }));
    expect(await withPipelineLock(dir, async () => 'ran')).toBe('ran');
  });

  it('waits for a live owner in another process, saying whom it waits for once, until aborted', async () => {
    const owner = await otherDeployer();
    const heard: (number | undefined)[] = [];
    const abort = new AbortController();
    let ran = false;
    const waiting = withPipelineLock(dir, async () => void (ran = true), { waitNoticeMs: 10, signal: abort.signal, onWait: (holder) => heard.push(holder) });
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

  it('gets the lock as soon as its owner is killed with SIGKILL (no stale lock to judge)', async () => {
    const owner = await otherDeployer();
    let ran = false;
    const waiting = withPipelineLock(dir, async () => {
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
    await withPipelineLock(dir, async (lock) => {
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
