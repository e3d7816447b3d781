import { constants } from 'node:fs';
import { lstat, mkdir, open, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { PipelineName } from '@conveyor/contracts';
import { checkLockTool as checkFlock, holdFileLock, type HeldLock } from '@conveyor/procfs';

export type { HeldLock };

/**
 * Under DEPLOY_DIR: the deploy locks' files, `<pipeline>.lock`, in a directory only the deployer's user
 * may enter. flock(2) needs no write access, only an open file: a lock file any other user can open (a
 * deployed version, a build) is one it can hold for ever, freezing that pipeline's deploys and the sweep.
 */
export const LOCKS_DIR = '.locks';
/** Where deployers before LOCKS_DIR kept a pipeline's lock: `<pipeline>/.lock`, 0644, reachable by every version's user. */
const LEGACY_LOCK_FILE = '.lock';

const local = new Map<string, Promise<void>>();

/** What the holder writes into the lock file once it holds it: for a waiter's log line only. */
interface LockContent {
  pid: number;
}

/** Throws, saying what to install, when flock(1) cannot run here: a deployer without it must not start. */
export function checkLockTool(): void {
  checkFlock('the deployer');
}

/** The file of `pipeline`'s deploy lock under `deployDir`. */
export function pipelineLockPath(deployDir: string, pipeline: string): string {
  // Contracts already validated it; parse again because this name becomes a path.
  return join(deployDir, LOCKS_DIR, `${PipelineName.parse(pipeline)}.lock`);
}

export interface PipelineLockOptions {
  /** Stops the wait (for another deploy of this process, or another process's), rejecting with its reason. */
  signal?: AbortSignal;
  /** Hears once, after `waitNoticeMs`, whom the wait is for (the holder's pid when it said). */
  onWait?: (holder: number | undefined) => void;
  waitNoticeMs?: number;
}

/**
 * Runs `fn` holding the pipeline's deploy lock: one deploy of a pipeline at a time, within this process
 * (a promise chain) and between deployer processes sharing DEPLOY_DIR (the kernel's lock on
 * `<deployDir>/.locks/<pipeline>.lock`, held through flock(1) for as long as this process keeps it and
 * lives). Waits as long as it takes, or until `signal` aborts. No deadline: only deployer processes can
 * open the file, and each holds it for one deploy (bounded by its health timeout), or one sweep.
 */
export async function withPipelineLock<T>(deployDir: string, pipeline: string, fn: (lock: HeldLock) => Promise<T>, opts: PipelineLockOptions = {}): Promise<T> {
  const path = pipelineLockPath(deployDir, pipeline);
  const previous = local.get(path) ?? Promise.resolve();
  const run = turnAfter(previous, path, opts.signal).then(() => runLocked(deployDir, pipeline, path, fn, opts));
  // The next in line waits for both: a wait aborted here must not let it overtake a deploy still running.
  const tail = Promise.allSettled([previous, run]).then(() => undefined);
  local.set(path, tail);
  void tail.then(() => {
    if (local.get(path) === tail) local.delete(path);
  });
  return run;
}

/** Resolves once `previous` (this process's deploy before ours) has settled; rejects as soon as `signal` aborts. */
function turnAfter(previous: Promise<void>, path: string, signal: AbortSignal | undefined): Promise<void> {
  if (!signal) return previous;
  return new Promise((resolve, reject) => {
    if (signal.aborted) return reject(abortReason(signal, path));
    const onAbort = () => reject(abortReason(signal, path));
    signal.addEventListener('abort', onAbort, { once: true });
    void previous.then(() => {
      signal.removeEventListener('abort', onAbort);
      resolve();
    });
  });
}

function abortReason(signal: AbortSignal, path: string): Error {
  return signal.reason instanceof Error ? signal.reason : new Error(`aborted while waiting for the lock on ${path}`);
}

async function runLocked<T>(deployDir: string, pipeline: string, path: string, fn: (lock: HeldLock) => Promise<T>, opts: PipelineLockOptions): Promise<T> {
  const { signal, onWait, waitNoticeMs = 100 } = opts;
  await ensureLockFile(deployDir, path);
  const tell = () => {
    if (!onWait) return;
    void readFile(path, 'utf8').then(
      (text) => onWait(holderOf(text)),
      () => onWait(undefined),
    );
  };
  const lock = await holdFileLock(path, { ...(signal ? { signal } : {}), onWait: tell, waitNoticeMs });
  try {
    // Same inode (no O_EXCL, no unlink): the kernel's lock stays on the file we write.
    await writeFile(path, JSON.stringify({ pid: process.pid } satisfies LockContent));
    // The old lock file locks nothing now; gone, it can no longer mislead whoever reads the directory.
    await rm(join(deployDir, pipeline, LEGACY_LOCK_FILE), { force: true }).catch(() => undefined);
    return await fn(lock);
  } finally {
    // Emptied first: a waiter's notice must not name a holder that has gone (unless the lock was lost:
    // the pid in the file may be the next holder's).
    if (!lock.lost()) await writeFile(path, '').catch(() => undefined);
    await lock.release();
  }
}

/**
 * Makes the lock file before flock(1) opens it (flock would make it 0644, with the umask): the deployer's,
 * 0600, in a 0700 directory of its own. A file that another user could have opened is never used: a
 * handle taken before a chmod outlives it, so the directory's mode is checked, not mended.
 */
async function ensureLockFile(deployDir: string, path: string): Promise<void> {
  await privateLockDir(deployDir);
  // No link followed, no FIFO waited on: only a regular file of ours is a lock file.
  const fh = await open(path, constants.O_RDONLY | constants.O_CREAT | constants.O_NOFOLLOW | constants.O_NONBLOCK, 0o600).catch((err: NodeJS.ErrnoException) => {
    throw new Error(`cannot open the deploy lock file ${path}: ${err.code === 'ELOOP' ? 'it is a symbolic link' : err.message}; remove it`);
  });
  try {
    const info = await fh.stat();
    if (!info.isFile() || !ownedByMe(info.uid)) throw new Error(`the deploy lock file ${path} is not a regular file of the deployer's user; remove it`);
    // Only we can enter the directory, so nobody else holds a handle on it: tightening it is enough.
    if ((info.mode & 0o077) !== 0) await fh.chmod(0o600);
  } finally {
    await fh.close();
  }
}

/** `<deployDir>/.locks`, made 0700 if missing; refused unless it is the deployer's alone. */
async function privateLockDir(deployDir: string): Promise<void> {
  const dir = join(deployDir, LOCKS_DIR);
  await mkdir(deployDir, { recursive: true });
  await mkdir(dir, { mode: 0o700 }).catch((err: NodeJS.ErrnoException) => {
    if (err.code !== 'EEXIST') throw err;
  });
  const info = await lstat(dir);
  if (!info.isDirectory() || !ownedByMe(info.uid) || (info.mode & 0o077) !== 0) {
    throw new Error(`${dir} must be a directory of the deployer's user that nobody else may enter (mode 0700): it holds the deploy locks, and a user who could open one could stop that pipeline's deploys for ever; remove it while no deploy is under way`);
  }
}

function ownedByMe(uid: number): boolean {
  const me = process.getuid?.();
  return me === undefined || uid === me;
}

function holderOf(text: string): number | undefined {
  try {
    const pid = (JSON.parse(text) as Partial<LockContent>).pid;
    return typeof pid === 'number' ? pid : undefined;
  } catch {
    return undefined;
  }
}
