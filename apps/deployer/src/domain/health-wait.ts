export type HealthOutcome =
  | { kind: 'healthy'; afterMs: number }
  | { kind: 'exited'; code: number | null; signal: string | null }
  | { kind: 'timeout'; afterMs: number }
  | { kind: 'aborted' };

export interface HealthWaitDeps {
  /** One probe of the health endpoint; true when it answered 200 within `timeoutMs`. */
  probe(timeoutMs: number): Promise<boolean>;
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

/** Polls until the first 200, the process exits, the deadline passes or the job is aborted. */
export async function waitHealthy(deps: HealthWaitDeps, opts: HealthWaitOptions): Promise<HealthOutcome> {
  const start = deps.now();
  const deadline = start + opts.timeoutMs;
  for (;;) {
    if (deps.signal?.aborted) return { kind: 'aborted' };
    const exit = deps.exited();
    if (exit) return { kind: 'exited', ...exit };
    const left = deadline - deps.now();
    if (left <= 0) return { kind: 'timeout', afterMs: deps.now() - start };
    if (await deps.probe(Math.max(1, Math.min(opts.probeTimeoutMs, left)))) return { kind: 'healthy', afterMs: deps.now() - start };
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
    case 'aborted':
      return 'deploy was interrupted';
    default: {
      const never: never = outcome;
      return never;
    }
  }
}
