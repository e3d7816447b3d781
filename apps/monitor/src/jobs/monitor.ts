import { liveDeploymentKey, parseLiveDeployment } from '@conveyor/contracts';
import { openStageLog, PermanentJobError, redeliveryNote, type Redis, type StageHandler } from '@conveyor/service-kit';
import { probeUrl, UnsafeProbeUrlError } from '../domain/probe-url.js';
import { verify } from '../domain/verify.js';
import type { Prober } from '../ports.js';

export interface MonitorHandlerDeps {
  prober: Prober;
  redis: Redis;
  prefix: string;
  sleep?: (ms: number, signal: AbortSignal) => Promise<void>;
  now?: () => number;
}

export function abortableSleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal.aborted) return reject(signal.reason);
    const timer = setTimeout(() => {
      signal.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal.reason);
    };
    signal.addEventListener('abort', onAbort, { once: true });
  });
}

/** How long a failed probe waits for the live record (the worker connection waits for ever while Redis is away). */
export const LIVE_RECORD_WAIT_MS = 1000;

/**
 * The version serving `pipeline` now, when it is another run's: the deployer records each version it puts
 * live before stopping the one it replaces. Nothing recorded, or unreadable (Redis away, a foreign value,
 * no answer within `waitMs`, or the verification aborted meanwhile), is no replacement: the failed probe
 * counts.
 */
export async function replacedBy(
  redis: Redis,
  key: { prefix: string; pipeline: string; runId: string },
  signal: AbortSignal,
  waitMs = LIVE_RECORD_WAIT_MS,
): Promise<{ runId: string; url: string } | undefined> {
  const live = parseLiveDeployment(await answerWithin(redis.get(liveDeploymentKey(key.prefix, key.pipeline)), waitMs, signal));
  return live && live.runId !== key.runId ? { runId: live.runId, url: live.url } : undefined;
}

/** `read`'s value, or null when it fails, has not answered within `ms`, or `signal` aborts first. The read itself is left to finish. */
function answerWithin<T>(read: Promise<T>, ms: number, signal: AbortSignal): Promise<T | null> {
  return new Promise((resolve) => {
    const timer = setTimeout(() => done(null), ms);
    const done = (value: T | null) => {
      clearTimeout(timer);
      signal.removeEventListener('abort', onAbort);
      resolve(value);
    };
    const onAbort = () => done(null);
    signal.addEventListener('abort', onAbort, { once: true });
    if (signal.aborted) done(null);
    read.then(done, () => done(null));
  });
}

/** Handles a MonitorJob: probes what the deploy stage deployed and reports the probe statistics. */
export function createMonitorHandler(deps: MonitorHandlerDeps): StageHandler<'monitor'> {
  return async (job, ctx) => {
    let url: string;
    try {
      url = probeUrl(job.url, job.verify.healthPath);
    } catch (err) {
      if (err instanceof UnsafeProbeUrlError) throw new PermanentJobError(err.message);
      throw err;
    }
    const log = openStageLog(deps.redis, deps.prefix, job.jobId);
    const again = redeliveryNote(ctx);
    if (again) log.write(again);
    const { durationSeconds, intervalSeconds, maxFailures, timeoutMs } = job.verify;
    log.write(`probing ${url} every ${intervalSeconds}s for ${durationSeconds}s (timeout ${timeoutMs} ms, ${maxFailures} failures allowed)\n`);
    try {
      const report = await verify(url, job.verify, {
        probe: (u, ms, signal) => deps.prober.probe(u, ms, signal),
        sleep: deps.sleep ?? abortableSleep,
        now: deps.now ?? (() => performance.now()),
        signal: ctx.signal,
        onProbe: (n, r) => log.write(`probe ${n}: ${r.ok ? 'ok' : 'FAILED'} ${r.detail} in ${r.ms} ms\n`),
        replacedBy: () => replacedBy(deps.redis, { prefix: deps.prefix, pipeline: job.pipeline, runId: job.runId }, ctx.signal),
      });
      log.write(`${report.status}: ${report.message}\n`);
      return { status: report.status, message: report.message, output: { probes: report.probes, ...(report.supersededBy ? { supersededBy: report.supersededBy } : {}) } };
    } finally {
      await log.close();
    }
  };
}
