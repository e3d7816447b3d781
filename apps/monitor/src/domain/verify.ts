import type { VerifySettings } from '@conveyor/contracts';
import { percentile } from './percentile.js';

export interface ProbeResult {
  ok: boolean;
  /** Time to the answer (or to the failure). */
  ms: number;
  /** e.g. `HTTP 500`, `timed out after 2000 ms`, `ECONNREFUSED`. */
  detail: string;
}

export interface VerifyDeps {
  probe(url: string, timeoutMs: number, signal: AbortSignal): Promise<ProbeResult>;
  sleep(ms: number, signal: AbortSignal): Promise<void>;
  /** Milliseconds on any monotonic clock. */
  now(): number;
  signal: AbortSignal;
  onProbe?(index: number, result: ProbeResult): void;
  /**
   * Asked when a probe fails: the version that serves the pipeline now, if it is no longer the one
   * probed (a later run's deploy replaced it). Its failures from then on are not the probed version's.
   */
  replacedBy?(): Promise<{ runId: string; url: string } | undefined>;
}

export interface ProbeStats {
  total: number;
  failed: number;
  p50Ms: number;
  p95Ms: number;
}

export interface VerifyReport {
  status: 'SUCCEEDED' | 'FAILED';
  message: string;
  probes: ProbeStats;
  /** Ended early: another run's deploy replaced the version probed, which had passed until then. */
  supersededBy?: { runId: string; url: string };
}

/**
 * Probes `url` every `intervalSeconds` over `durationSeconds`, from its start to its end inclusive
 * (10 s at 1 s: 11 probes, at 0, 1, … 10 s), so a version that breaks in the window's last interval is
 * still seen; a slow probe skips the slots it overran, so the window stays the configured length. A
 * probe sent at the end may take its timeout to answer: the verdict can come that much later. Fails as soon as more than `maxFailures`
 * probes failed. A failed probe of a version another run's deploy has replaced ends the verification
 * instead, with the probes before it as its verdict: a replaced version is stopped, not broken. Throws
 * the signal's reason when aborted: an interrupted verification has no verdict.
 */
export async function verify(url: string, settings: VerifySettings, deps: VerifyDeps): Promise<VerifyReport> {
  const intervalMs = settings.intervalSeconds * 1000;
  const start = deps.now();
  const end = start + settings.durationSeconds * 1000;
  // Only the latencies are kept: a day-long verification at 0.1 s probes a million times.
  const latencies: number[] = [];
  let failed = 0;
  let lastFailure = '';
  let supersededBy: { runId: string; url: string } | undefined;
  for (let due = start; due <= end; ) {
    deps.signal.throwIfAborted();
    const wait = due - deps.now();
    if (wait > 0) await deps.sleep(wait, deps.signal);
    deps.signal.throwIfAborted();
    const result = await deps.probe(url, settings.timeoutMs, deps.signal);
    deps.signal.throwIfAborted();
    if (!result.ok && deps.replacedBy) {
      supersededBy = await deps.replacedBy();
      deps.signal.throwIfAborted();
      if (supersededBy) {
        deps.onProbe?.(latencies.length + 1, result);
        break;
      }
    }
    latencies.push(result.ms);
    deps.onProbe?.(latencies.length, result);
    if (!result.ok) {
      failed += 1;
      lastFailure = result.detail;
      if (failed > settings.maxFailures) break;
    }
    // The next slot after now, but never this one again: a timer may fire a millisecond early.
    const elapsed = deps.now() - start;
    due = Math.max(due + intervalMs, start + (Math.floor(elapsed / intervalMs) + 1) * intervalMs);
  }
  const probes: ProbeStats = { total: latencies.length, failed, p50Ms: percentile(latencies, 50), p95Ms: percentile(latencies, 95) };
  const latency = `p50 ${probes.p50Ms} ms, p95 ${probes.p95Ms} ms`;
  if (supersededBy) {
    return {
      status: 'SUCCEEDED',
      message: `run ${supersededBy.runId} replaced this version (${supersededBy.url} serves now); until then ${probes.total} probes of ${url}, ${failed} failed (${settings.maxFailures} allowed)${probes.total ? `; ${latency}` : ''}`,
      probes,
      supersededBy,
    };
  }
  if (failed > settings.maxFailures) {
    return {
      status: 'FAILED',
      message: `${failed} of ${probes.total} probes of ${url} failed (${settings.maxFailures} allowed); last: ${lastFailure}`,
      probes,
    };
  }
  return { status: 'SUCCEEDED', message: `${probes.total} probes of ${url}, ${failed} failed (${settings.maxFailures} allowed); ${latency}`, probes };
}
