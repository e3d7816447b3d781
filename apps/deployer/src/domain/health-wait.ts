export type HealthOutcome =
  | { kind: 'healthy'; afterMs: number }
  | { kind: 'exited'; code: number | null; signal: string | null }
  | { kind: 'timeout'; afterMs: number }
  /** A probe said its answer can never count (another process answers on the port): waiting longer is pointless. */
  | { kind: 'refused'; reason: string }
  | { kind: 'aborted' };

/**
 * One probe's verdict: true for a 200 that counts, false for none (yet), `refused` for a 200 that must
 * never count and will not start to (its `reason` becomes the deploy's message).
 */
export type ProbeVerdict = boolean | { refused: string };

export interface HealthWaitDeps {
  /** One probe of the health endpoint; true when it answered 200 within `timeoutMs` (and the answer counts). */
  probe(timeoutMs: number): Promise<ProbeVerdict>;
  /** Set once the deployed process has exited. */
  exited(): { code: number | null; signal: string | null } | undefined;
  sleep(ms: number): Promise<void>;
  now(): number;
  signal?: AbortSignal;
}

export interface HealthWaitOptions {
  timeoutMs: number;
  intervalMs: number;
  probeTimeoutMs: number;
}

/** Polls until the first 200 that counts, a refused one, the process exits, the deadline passes or the job is aborted. */
export async function waitHealthy(deps: HealthWaitDeps, opts: HealthWaitOptions): Promise<HealthOutcome> {
  const start = deps.now();
  const deadline = start + opts.timeoutMs;
  for (;;) {
    if (deps.signal?.aborted) return { kind: 'aborted' };
    const exit = deps.exited();
    if (exit) return { kind: 'exited', ...exit };
    const left = deadline - deps.now();
    if (left <= 0) return { kind: 'timeout', afterMs: deps.now() - start };
    const verdict = await deps.probe(Math.max(1, Math.min(opts.probeTimeoutMs, left)));
    if (typeof verdict === 'object') return { kind: 'refused', reason: verdict.refused };
    if (verdict) return { kind: 'healthy', afterMs: deps.now() - start };
    // A probe can succeed by luck just before the process dies; an exit seen after a failed probe wins.
    const remaining = deadline - deps.now();
    if (remaining > 0) await deps.sleep(Math.min(opts.intervalMs, remaining));
  }
}

export function describeHealthFailure(outcome: Exclude<HealthOutcome, { kind: 'healthy' }>, timeoutSeconds: number, healthPath: string): string {
  switch (outcome.kind) {
    case 'exited':
      return outcome.signal
        ? `deployed command was killed by ${outcome.signal} before ${healthPath} answered 200`
        : `deployed command exited with code ${outcome.code} before ${healthPath} answered 200`;
    case 'timeout':
      return `${healthPath} did not answer 200 within ${timeoutSeconds}s`;
    case 'refused':
      return outcome.reason;
    case 'aborted':
      return 'deploy was interrupted';
    default: {
      const never: never = outcome;
      return never;
    }
  }
}
