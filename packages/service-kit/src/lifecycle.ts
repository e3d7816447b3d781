import type { Worker } from 'bullmq';
import type { Logger } from './logger.js';
import type { Redis } from './redis.js';

/** The abort reason closeWorker gives running jobs when a shutdown outlasts its drain time. */
export const SHUTTING_DOWN = 'shutting down';
/** The abort reason of a stage job whose run was cancelled. */
export const RUN_CANCELLED = 'run cancelled';

/** Rejects when `promise` has not settled within `ms` (a readiness check must answer, not hang). */
export async function within<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} did not answer within ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

export function readinessChecks(redis: Redis, worker: Worker): Record<string, () => Promise<void> | void> {
  return {
    redis: async () => {
      await within(redis.ping(), 1000, 'redis');
    },
    worker: () => {
      if (!worker.isRunning()) throw new Error('worker not running');
    },
  };
}

/**
 * Closes the worker, waiting at most `ms` for running jobs. A job still running after that keeps its
 * BullMQ lock until it expires and is then re-delivered, which the handlers are built for.
 */
export async function closeWorker(worker: Worker, ms: number, logger: Logger): Promise<void> {
  const closing = worker.close();
  try {
    await within(closing, ms, 'worker close');
  } catch {
    // Abort what still runs (builds kill their process groups); the jobs' locks lapse and another
    // worker runs them again.
    logger.warn({ waitedMs: ms }, 'worker did not close in time; cancelling running jobs, they will be re-delivered');
    worker.cancelAllJobs(SHUTTING_DOWN);
    await within(closing, 10_000, 'worker close after cancel').catch(() => undefined);
  }
}

/**
 * Logs a Redis client's (or BullMQ queue's) errors, at most once per `everyMs`: while Redis is away the
 * client retries forever and would otherwise print every failed attempt (or crash on an unhandled 'error').
 */
export function logErrors(emitter: { on(event: 'error', fn: (err: Error) => void): unknown }, logger: Logger, client: string, everyMs = 10_000): void {
  let last = 0;
  emitter.on('error', (err: Error) => {
    const now = Date.now();
    if (now - last < everyMs) return;
    last = now;
    logger.warn({ err, client }, 'redis connection error');
  });
}

/** Closes a client within `ms` (QUIT waits for a Redis that may be gone), then drops the connection. */
export async function closeRedis(client: Redis, ms = 2000): Promise<void> {
  try {
    await within(client.quit(), ms, 'redis quit');
  } catch {
    client.disconnect();
  }
}

/** Closes a BullMQ queue within `ms`; a queue stuck on a missing Redis is left to the process exit. */
export async function closeQueue(queue: { close(): Promise<void> }, ms = 2000): Promise<void> {
  await within(queue.close(), ms, 'queue close').catch(() => undefined);
}

/**
 * Until `started()` is called, an error that ends the process says what went wrong in one line on
 * stderr (an invalid environment, a port in use) instead of a stack trace, and exits 1. Afterwards
 * uncaught errors are left to Node (and the logs). Call it first thing in a service's main module.
 */
export function explainStartupFailures(service: string): { started(): void } {
  const onError = (err: unknown) => {
    const e = err as NodeJS.ErrnoException & { address?: string; port?: number };
    const what =
      e?.code === 'EADDRINUSE'
        ? `port ${e.port ?? '?'} on ${e.address ?? 'its host'} is already in use (another ${service}, or another program): stop it or set PORT`
        : e?.code === 'EACCES' && e.port !== undefined
          ? `may not listen on port ${e.port}: choose a PORT above 1023 or run with the right to bind it`
          : e instanceof Error && /^invalid environment/.test(e.message)
            ? e.message
            : e instanceof Error
              ? (e.stack ?? e.message)
              : String(err);
    process.stderr.write(`✖ ${service} could not start: ${what}\n`);
    process.exit(1);
  };
  process.on('uncaughtException', onError);
  return { started: () => void process.off('uncaughtException', onError) };
}
