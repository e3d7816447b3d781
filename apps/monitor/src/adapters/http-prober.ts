import type { ProbeResult } from '../domain/verify.js';
import type { Prober } from '../ports.js';

function failureDetail(err: unknown, timedOut: boolean, timeoutMs: number): string {
  if (timedOut) return `timed out after ${timeoutMs} ms`;
  const cause = (err as { cause?: { code?: string; message?: string } })?.cause;
  return cause?.code ?? cause?.message ?? (err instanceof Error ? err.message : String(err));
}

/** GET with fetch; a 2xx within the timeout passes. Redirects are not followed (a 3xx fails the probe). */
export class HttpProber implements Prober {
  async probe(url: string, timeoutMs: number, signal: AbortSignal): Promise<ProbeResult> {
    const timeout = AbortSignal.timeout(timeoutMs);
    const started = performance.now();
    const elapsed = () => Math.round((performance.now() - started) * 10) / 10;
    try {
      const res = await fetch(url, { redirect: 'manual', signal: AbortSignal.any([signal, timeout]), headers: { 'user-agent': 'conveyor-monitor' } });
      // The status is the answer; a large or endless body must not be read (nor held in memory).
      await res.body?.cancel().catch(() => undefined);
      const ok = res.status >= 200 && res.status < 300;
      return { ok, ms: elapsed(), detail: `HTTP ${res.status}` };
    } catch (err) {
      return { ok: false, ms: elapsed(), detail: failureDetail(err, timeout.aborted, timeoutMs) };
    }
  }
}
