import { groupAlive, readProcStat } from '@conveyor/procfs';

const HAS_PROC = process.platform === 'linux';

function signalGroup(pgid: number, signal: NodeJS.Signals | 0): boolean {
  try {
    process.kill(-pgid, signal);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * Whether the group recorded as (`pgid`, leader start time `procStart`) is still the one we started:
 * a living leader with another start time means the pid was recycled and the group is someone else's.
 */
export function ownGroupAlive(pgid: number, procStart: string | undefined): boolean {
  if (pgid <= 1) return false;
  if (HAS_PROC) {
    // On Linux a record must name the leader's start time: without it, a recycled pid could be anyone's.
    if (procStart === undefined) return false;
    const leader = readProcStat(pgid);
    if (leader && leader.state !== 'Z' && leader.startTime !== procStart) return false;
  }
  return groupAlive(pgid);
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
