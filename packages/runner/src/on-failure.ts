import { runInNewContext } from 'node:vm';

/** What a phase's `on-failure` asks for, once parsed. */
export type OnFailurePolicy =
  | { kind: 'ABORT' }
  | { kind: 'CONTINUE' }
  /** Re-run the phase up to `retries` more times while its output matches `pattern`. */
  | { kind: 'RETRY'; retries: number; pattern: string };

const DEFAULT_RETRIES = 3;
const MAX_RETRIES = 100;

/** ABORT | CONTINUE | RETRY | RETRY-<count> | RETRY-<regex> | RETRY-<count>-<regex>, as CodeBuild spells them. */
export function parseOnFailure(value: string): OnFailurePolicy {
  if (value === 'ABORT' || value === 'CONTINUE') return { kind: value };
  if (value === 'RETRY') return { kind: 'RETRY', retries: DEFAULT_RETRIES, pattern: '.*' };
  const m = /^RETRY-(?:(\d+)(?:-(.+))?|(.+))$/s.exec(value);
  if (!m) throw new Error(`expected ABORT, CONTINUE, RETRY, RETRY-<count>, RETRY-<regex> or RETRY-<count>-<regex>, got "${value}"`);
  const retries = m[1] === undefined ? DEFAULT_RETRIES : Number(m[1]);
  if (retries > MAX_RETRIES) throw new Error(`retry count must be between 0 and ${MAX_RETRIES}, got ${retries}`);
  const pattern = m[2] ?? m[3] ?? '.*';
  try {
    new RegExp(pattern);
  } catch (err) {
    throw new Error(`invalid regular expression "${pattern}": ${(err as Error).message}`);
  }
  return { kind: 'RETRY', retries, pattern };
}

/**
 * Tests a user's regex against a phase's output. The regex and the output both come from the
 * build, so a catastrophic pattern must not block the worker's event loop (its queue lock
 * would lapse): the match runs in a VM context with a time limit, and a timeout counts as no match.
 */
export function matchesWithin(pattern: string, text: string, timeoutMs = 250): boolean {
  try {
    return runInNewContext('new RegExp(p, "m").test(t)', { p: pattern, t: text }, { timeout: timeoutMs }) === true;
  } catch {
    return false;
  }
}
