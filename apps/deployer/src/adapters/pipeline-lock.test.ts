import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { withPipelineLock } from './pipeline-lock.js';
import { processStartTime } from './process-group.js';

let dir: string;
const children: ChildProcess[] = [];
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'cv-lock-'));
});
afterEach(async () => {
  children.splice(0).forEach((c) => c.kill('SIGKILL'));
  await rm(dir, { recursive: true, force: true });
});

/** A lock file as another deployer process would have written it. */
const lockedBy = (pid: number, procStart?: string) => writeFile(join(dir, '.lock'), JSON.stringify({ pid, procStart, token: 'theirs' }));
const sleeper = () => {
  const child = spawn('sleep', ['30'], { stdio: 'ignore' });
  children.push(child);
  return child.pid!;
};

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
  });

  it('takes over the lock of a dead owner, and of a pid that now names another process', async () => {
    await lockedBy(spawnSync('true').pid!, '1');
    expect(await withPipelineLock(dir, async () => 'dead owner', { pollMs: 10 })).toBe('dead owner');
    await lockedBy(sleeper(), 'not-its-start-time');
    expect(await withPipelineLock(dir, async () => 'recycled pid', { pollMs: 10 })).toBe('recycled pid');
  });

  it('waits for a live owner, saying whom it waits for once, until aborted', async () => {
    const owner = sleeper();
    await lockedBy(owner, await processStartTime(owner));
    const heard: (number | undefined)[] = [];
    const abort = new AbortController();
    const waiting = withPipelineLock(dir, async () => 'ran', { pollMs: 10, signal: abort.signal, onWait: (holder) => heard.push(holder) });
    await new Promise((r) => setTimeout(r, 100));
    abort.abort(new Error('shutting down'));
    await expect(waiting).rejects.toThrow('shutting down');
    expect(heard).toEqual([owner]);
  });
});
