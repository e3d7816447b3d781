import { groupAlive, groupIsOurs } from '@conveyor/procfs';

function signalGroup(pgid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(-pgid, signal);
  } catch {
    // gone already, or not ours to signal: waitGone says which
  }
}

/**
 * Whether the group recorded as (`pgid`, leader start time `procStart`) is still the one we started.
 * Strict: on Linux a record without the leader's start time is not trusted (a recycled pid could be
 * anyone's).
 */
export function ownGroupAlive(pgid: number, procStart: string | undefined): boolean {
  return groupIsOurs({ pid: pgid, startTime: procStart }, { strict: true });
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function waitGone(pgid: number, ms: number): Promise<boolean> {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    if (!groupAlive(pgid)) return true;
    await sleep(50);
  }
  return !groupAlive(pgid);
}

/** SIGTERM to the whole group, SIGKILL after `graceMs`; resolves once the group is gone (or gives up after 5 s more). */
export async function stopGroup(pgid: number, graceMs: number): Promise<'terminated' | 'killed' | 'not-running' | 'stuck'> {
  if (!groupAlive(pgid)) return 'not-running';
  signalGroup(pgid, 'SIGTERM');
  if (await waitGone(pgid, graceMs)) return 'terminated';
  signalGroup(pgid, 'SIGKILL');
  return (await waitGone(pgid, 5000)) ? 'killed' : 'stuck';
}
