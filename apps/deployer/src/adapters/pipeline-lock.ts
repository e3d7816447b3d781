import { randomUUID } from 'node:crypto';
import { mkdir, open, readFile, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { pidAlive, processStartTime } from './process-group.js';

const LOCK_FILE = '.lock';
/** Tokens of the locks this process holds: a lock file naming our pid but another token is a previous incarnation's. */
const held = new Set<string>();
const local = new Map<string, Promise<unknown>>();

interface LockContent {
  pid: number;
  /** The owner's start time (Linux): a later process given the same pid is not the owner. */
  procStart?: string;
  token: string;
}

async function isStale(path: string): Promise<boolean> {
  let content: LockContent;
  try {
    content = JSON.parse(await readFile(path, 'utf8')) as LockContent;
  } catch {
    // Created but not yet written by its owner, or garbage: stale only once it has been so for a while.
    const info = await stat(path).catch(() => undefined);
    return info === undefined || Date.now() - info.mtimeMs > 10_000;
  }
  if (typeof content?.pid !== 'number') return true;
  if (content.pid === process.pid) return !held.has(content.token);
  if (!(await pidAlive(content.pid))) return true;
  const now = await processStartTime(content.pid);
  return content.procStart !== undefined && now !== undefined && now !== content.procStart;
}

/** Taken (true), or held by someone else: then the holder's pid, when the lock file names one. */
async function tryAcquire(path: string, token: string): Promise<true | { holder?: number }> {
  try {
    const fh = await open(path, 'wx');
    try {
      await fh.writeFile(JSON.stringify({ pid: process.pid, procStart: await processStartTime(process.pid), token } satisfies LockContent));
    } finally {
      await fh.close();
    }
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    if (await isStale(path)) await rm(path, { force: true });
    const holder = await readFile(path, 'utf8').then((t) => (JSON.parse(t) as LockContent).pid, () => undefined);
    return { holder };
  }
}

async function release(path: string, token: string): Promise<void> {
  held.delete(token);
  const content = await readFile(path, 'utf8').catch(() => '');
  if (content.includes(token)) await rm(path, { force: true });
}

function abortError(signal: AbortSignal): Error {
  return signal.reason instanceof Error ? signal.reason : new Error('aborted while waiting for the pipeline lock');
}

/**
 * Runs `fn` holding the pipeline's deploy lock: one deploy of a pipeline at a time, within this process
 * (a promise chain) and between deployer processes sharing DEPLOY_DIR (an O_EXCL lock file naming its
 * owner, taken over when the owner is dead or its pid now names another process). Waits as long as it
 * takes, or until `signal` aborts; `onWait` hears once whom it waits for.
 */
export async function withPipelineLock<T>(pipelineDir: string, fn: () => Promise<T>, opts: { signal?: AbortSignal; onWait?: (holder: number | undefined) => void; pollMs?: number } = {}): Promise<T> {
  const { signal, onWait, pollMs = 200 } = opts;
  const previous = local.get(pipelineDir) ?? Promise.resolve();
  const run = previous.catch(() => undefined).then(async () => {
    await mkdir(pipelineDir, { recursive: true });
    const path = join(pipelineDir, LOCK_FILE);
    const token = randomUUID();
    held.add(token);
    try {
      let waited = false;
      for (let got = await tryAcquire(path, token); got !== true; got = await tryAcquire(path, token)) {
        if (!waited) onWait?.(got.holder);
        waited = true;
        if (signal?.aborted) throw abortError(signal);
        await new Promise((r) => setTimeout(r, pollMs));
      }
      return await fn();
    } finally {
      await release(path, token);
    }
  });
  const tail = run.catch(() => undefined);
  local.set(pipelineDir, tail);
  void tail.then(() => {
    if (local.get(pipelineDir) === tail) local.delete(pipelineDir);
  });
  return run;
}
