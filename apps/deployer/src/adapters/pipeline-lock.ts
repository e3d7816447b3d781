import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';

const LOCK_FILE = '.lock';
const local = new Map<string, Promise<unknown>>();

/** What the holder writes into the lock file once it holds it: for a waiter's log line only. */
interface LockContent {
  pid: number;
}

/**
 * flock(1) takes the kernel's lock on the file and runs this fixed script, which says so and then waits
 * for its stdin to close. The lock lives exactly as long as that pipe: released when we close it, and by
 * the kernel when this process dies, however it dies. No pid, start time or staleness is judged, so two
 * deployers can never both take over a lock they think is stale.
 */
const HOLD = ['--exclusive'];
// Signals sent to a terminal's or a service manager's process group must not end the lock before its
// owner is done: flock and its script run in a group of their own, and the script ignores them (ignored
// signals stay ignored across exec). The pipe still ends it with its owner.
const SCRIPT = "trap '' INT TERM HUP; echo locked; exec cat >/dev/null";

/** Throws, saying what to install, when flock(1) cannot run here: a deployer without it must not start. */
export function checkLockTool(): void {
  const probe = spawnSync('flock', [...HOLD, '/dev/null', 'true'], { stdio: 'ignore' });
  if (probe.error || probe.status !== 0) {
    throw new Error(`the deployer takes its deploy locks with flock(1), which cannot run here (${probe.error?.message ?? `exit ${probe.status}`}); install util-linux`);
  }
}

/** A lock this process holds. */
export interface HeldLock {
  /** True once the lock's holder process has ended before its release: another deployer may hold it now. */
  lost(): boolean;
}

/** Resolves once this process holds the lock, or rejects when `signal` aborts first. */
function acquire(path: string, signal: AbortSignal | undefined, onWait: () => void, waitNoticeMs: number): Promise<HeldLock & { release(): Promise<void> }> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason instanceof Error ? signal.reason : new Error('aborted while waiting for the pipeline lock'));
    // flock keeps the lock and runs the script, which inherits it: the lock ends when both have ended.
    const child: ChildProcess = spawn('flock', [...HOLD, path, 'sh', '-c', SCRIPT], { stdio: ['pipe', 'pipe', 'pipe'], detached: true });
    let settled = false;
    let stderr = '';
    const notice = setTimeout(onWait, waitNoticeMs);
    const done = (err?: Error) => {
      settled = true;
      clearTimeout(notice);
      signal?.removeEventListener('abort', onAbort);
      if (err) {
        child.kill('SIGKILL');
        reject(err);
      }
    };
    const onAbort = () => !settled && done(signal!.reason instanceof Error ? signal!.reason : new Error('aborted while waiting for the pipeline lock'));
    signal?.addEventListener('abort', onAbort, { once: true });
    child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', (err) => !settled && done(new Error(`cannot run flock for the deploy lock: ${err.message}`)));
    child.on('exit', (code) => !settled && done(new Error(`flock exited (${code}) before taking the deploy lock: ${stderr.trim() || 'no message'}`)));
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

/**
 * Runs `fn` holding the pipeline's deploy lock: one deploy of a pipeline at a time, within this process
 * (a promise chain) and between deployer processes sharing DEPLOY_DIR (the kernel's lock on
 * `<pipelineDir>/.lock`, held through flock(1) for as long as this process keeps it and lives). Waits
 * as long as it takes, or until `signal` aborts; `onWait` hears once whom it waits for.
 */
export async function withPipelineLock<T>(
  pipelineDir: string,
  fn: (lock: HeldLock) => Promise<T>,
  opts: { signal?: AbortSignal; onWait?: (holder: number | undefined) => void; waitNoticeMs?: number } = {},
): Promise<T> {
  const { signal, onWait, waitNoticeMs = 100 } = opts;
  const previous = local.get(pipelineDir) ?? Promise.resolve();
  const run = previous
    .catch(() => undefined)
    .then(async () => {
      await mkdir(pipelineDir, { recursive: true });
      const path = join(pipelineDir, LOCK_FILE);
      const tell = () => {
        if (!onWait) return;
        void readFile(path, 'utf8').then(
          (text) => onWait(holderOf(text)),
          () => onWait(undefined),
        );
      };
      const lock = await acquire(path, signal, tell, waitNoticeMs);
      try {
        // Same inode (no O_EXCL, no unlink): the kernel's lock stays on the file we write.
        await writeFile(path, JSON.stringify({ pid: process.pid } satisfies LockContent));
        return await fn(lock);
      } finally {
        // Emptied first: a waiter's notice must not name a holder that has gone (unless the lock was lost:
        // the pid in the file may be the next holder's).
        if (!lock.lost()) await writeFile(path, '').catch(() => undefined);
        await lock.release();
      }
    });
  const tail = run.catch(() => undefined);
  local.set(pipelineDir, tail);
  void tail.then(() => {
    if (local.get(pipelineDir) === tail) local.delete(pipelineDir);
  });
  return run;
}

function holderOf(text: string): number | undefined {
  try {
    const pid = (JSON.parse(text) as Partial<LockContent>).pid;
    return typeof pid === 'number' ? pid : undefined;
  } catch {
    return undefined;
  }
}
