import { spawn, spawnSync, type ChildProcess } from 'node:child_process';

/**
 * The kernel's lock on a file (flock(2)), held from Node through flock(1): flock takes the lock and runs
 * a fixed script, which says so and then waits for its stdin to close. The lock lives exactly as long
 * as that pipe: released when we close it, and by the kernel when this process dies, however it dies.
 * No pid, start time or staleness is judged, so two processes can never both take over a lock they
 * think is stale.
 */
const HOLD = ['--exclusive'];
/** flock's exit code when `--nonblock` finds the lock taken (any other failure exits otherwise). */
const BUSY = 75;
// Signals sent to a terminal's or a service manager's process group must not end the lock before its
// owner is done: flock and its script run in a group of their own, and the script ignores them (ignored
// signals stay ignored across exec). The pipe still ends it with its owner.
const SCRIPT = "trap '' INT TERM HUP; echo locked; exec cat >/dev/null";

/** Throws, saying what to install, when flock(1) cannot run here (`who`: the part that needs it). */
export function checkLockTool(who: string): void {
  const probe = spawnSync('flock', [...HOLD, '/dev/null', 'true'], { stdio: 'ignore' });
  if (probe.error || probe.status !== 0) {
    throw new Error(`${who} takes its locks with flock(1), which cannot run here (${probe.error?.message ?? `exit ${probe.status}`}); install util-linux`);
  }
}

/** A lock this process holds. */
export interface HeldLock {
  /** True once the lock's holder process has ended before its release: another process may hold it now. */
  lost(): boolean;
}

export interface FileLock extends HeldLock {
  release(): Promise<void>;
}

export interface HoldOptions {
  /** Give up, rejecting with its reason, when this aborts while waiting. */
  signal?: AbortSignal;
  /** Called once if the lock is not taken within `waitNoticeMs` (default 100 ms). */
  onWait?: () => void;
  waitNoticeMs?: number;
}

/** Takes the lock on `path` (created if missing), waiting as long as it takes or until `signal` aborts. */
export function holdFileLock(path: string, opts: HoldOptions = {}): Promise<FileLock> {
  return hold(path, false, opts) as Promise<FileLock>;
}

/** Takes the lock on `path` if it is free now; undefined if another process holds it. */
export function tryHoldFileLock(path: string): Promise<FileLock | undefined> {
  return hold(path, true, {});
}

function hold(path: string, nonblock: boolean, { signal, onWait, waitNoticeMs = 100 }: HoldOptions): Promise<FileLock | undefined> {
  const abortError = () => (signal?.reason instanceof Error ? signal.reason : new Error(`aborted while waiting for the lock on ${path}`));
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(abortError());
    const flags = nonblock ? [...HOLD, '--nonblock', '--conflict-exit-code', String(BUSY)] : HOLD;
    // flock keeps the lock and runs the script, which inherits it: the lock ends when both have ended.
    const child: ChildProcess = spawn('flock', [...flags, path, 'sh', '-c', SCRIPT], { stdio: ['pipe', 'pipe', 'pipe'], detached: true });
    let settled = false;
    let stderr = '';
    const notice = onWait ? setTimeout(onWait, waitNoticeMs) : undefined;
    const done = (err?: Error) => {
      settled = true;
      clearTimeout(notice);
      signal?.removeEventListener('abort', onAbort);
      if (err) {
        child.kill('SIGKILL');
        reject(err);
      }
    };
    const onAbort = () => !settled && done(abortError());
    signal?.addEventListener('abort', onAbort, { once: true });
    child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', (err) => !settled && done(new Error(`cannot run flock for the lock on ${path}: ${err.message}`)));
    child.on('exit', (code) => {
      if (settled) return;
      if (nonblock && code === BUSY) {
        done();
        return resolve(undefined);
      }
      done(new Error(`flock exited (${code}) before taking the lock on ${path}: ${stderr.trim() || 'no message'}`));
    });
    child.stdout!.once('data', () => {
      if (settled) return;
      done();
      let releasing = false;
      let lost = false;
      const exited = new Promise<void>((r) => (child.exitCode !== null ? r() : child.once('exit', () => r())));
      void exited.then(() => (lost = !releasing));
      resolve({
        lost: () => lost,
        async release() {
          releasing = true;
          child.stdin!.end();
          await exited;
        },
      });
    });
  });
}
