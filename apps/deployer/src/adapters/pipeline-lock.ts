import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { checkLockTool as checkFlock, holdFileLock, type HeldLock } from '@conveyor/procfs';

export type { HeldLock };

const LOCK_FILE = '.lock';
const local = new Map<string, Promise<unknown>>();

/** What the holder writes into the lock file once it holds it: for a waiter's log line only. */
interface LockContent {
  pid: number;
}

/** Throws, saying what to install, when flock(1) cannot run here: a deployer without it must not start. */
export function checkLockTool(): void {
  checkFlock('the deployer');
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
      const lock = await holdFileLock(path, { ...(signal ? { signal } : {}), onWait: tell, waitNoticeMs });
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
