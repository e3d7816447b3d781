import { describeIssues, RunEvent } from '@conveyor/contracts';

export type ParsedEntry = { ok: true; event: RunEvent } | { ok: false; reason: string };

/** The field of a stream entry that holds the RunEvent's JSON (the orchestrator writes a single one). */
export const EVENT_FIELD = 'event';

/** Parses the flat field/value list of a stream entry; anything malformed is a reason, never a throw. */
export function parseStreamEntry(fields: readonly string[]): ParsedEntry {
  let json: string | undefined;
  for (let i = 0; i + 1 < fields.length; i += 2) {
    if (fields[i] === EVENT_FIELD) json = fields[i + 1];
  }
  if (json === undefined) return { ok: false, reason: `no "${EVENT_FIELD}" field` };
  let value: unknown;
  try {
    value = JSON.parse(json);
  } catch {
    return { ok: false, reason: 'event is not JSON' };
  }
  const parsed = RunEvent.safeParse(value);
  if (!parsed.success) {
    return { ok: false, reason: describeIssues(parsed.error) };
  }
  return { ok: true, event: parsed.data };
}
