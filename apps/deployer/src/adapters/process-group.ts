import { groupIsOurs, readProcStat, scanGroup, unprovenGroupMembers, type ProcessIdentity } from '@conveyor/procfs';

/**
 * A version's process group as its record names it: the group's number (the leader's pid), the leader's
 * kernel start time, the boot it ran in, and its mark (every process of a version is started with
 * `CONVEYOR_DEPLOY_MARK=<mark>` in its environment: childEnv; records before it have the run id,
 * `CONVEYOR_RUN_ID`, stand in).
 */
export interface RecordedGroup {
  pgid: number;
  procStart?: string | undefined;
  bootId?: string | undefined;
  runId?: string | undefined;
  /** The version's CONVEYOR_DEPLOY_MARK (records before it: the run id stands in). */
  mark?: string | undefined;
}

/** The group as procfs identifies it, with the mark its processes carry. */
export function groupIdentity(group: RecordedGroup): ProcessIdentity {
  return {
    pid: group.pgid,
    ...(group.procStart === undefined ? {} : { startTime: group.procStart }),
    ...(group.bootId === undefined ? {} : { bootId: group.bootId }),
    ...(group.mark !== undefined ? { mark: `CONVEYOR_DEPLOY_MARK=${group.mark}` } : group.runId !== undefined ? { mark: `CONVEYOR_RUN_ID=${group.runId}` } : {}),
  };
}

function signalGroup(pgid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(-pgid, signal);
  } catch {
    // gone already, or not ours to signal: the caller's wait says which
  }
}

/**
 * Whether the recorded group still runs, and is still the one we started. The rule (procfs'
 * groupMembersOf), so that a reused pid is never taken for a version's group nor its group signalled:
 * - a record of another boot names nothing;
 * - a process at pid = pgid must be the recorded leader (same start time): any other one got the number
 *   after the whole recorded group ended (Linux hands out no number still used as a process group);
 * - with the leader gone (exited, other members still running), the group is the running processes
 *   whose own pgid is the recorded one, that started no earlier than the leader, and that carry the
 *   version's mark (`CONVEYOR_DEPLOY_MARK`): a stranger's group given the number after ours ended has
 *   later start times too, but not the mark, a random value of this version's alone. Members that lost it
 *   are not taken either (unprovenMembers names them).
 * Strict: on Linux a record without the leader's start time is not trusted (a recycled pid could be anyone's).
 */
export function ownGroupAlive(group: RecordedGroup): boolean {
  return groupIsOurs(groupIdentity(group), { strict: true });
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * SIGTERM to the whole group, SIGKILL after `graceMs`; resolves once the group is gone (or gives up after
 * 5 s more). Only a group ownGroupAlive finds is signalled, and only while a process it had then still
 * runs in it (signalUntilGone): a group that ended, its number since given to someone else's, is never
 * signalled (not even between the SIGTERM and the SIGKILL).
 */
export async function stopGroup(group: RecordedGroup, graceMs: number): Promise<'terminated' | 'killed' | 'not-running' | 'stuck'> {
  if (!ownGroupAlive(group)) return 'not-running';
  return signalUntilGone(group, graceMs);
}

/**
 * Processes of the recorded group's number, its leader gone, that cannot be proven the version's (no
 * readable mark), where no process of the group can (stopGroup signals those that share the number with
 * a proven one): not signalled. Under a root deployer the version's own user id still stops them; a
 * deployer running versions as itself can only say they are there.
 */
export function unprovenMembers(group: RecordedGroup): number[] {
  return group.procStart === undefined ? [] : unprovenGroupMembers(groupIdentity(group));
}

/**
 * Signals the group until every process it had when found the version's is gone. Found so (its leader,
 * or members with its mark, there), all of its processes are the version's, those that lost the mark
 * too: no other process can have that group number while one of them has it. So the group is signalled,
 * SIGKILL included, for as long as any of those processes (by pid and start time, still in the group)
 * runs, and never after.
 */
async function signalUntilGone(group: RecordedGroup, graceMs: number): Promise<'terminated' | 'killed' | 'stuck'> {
  const found = scanGroup(groupIdentity(group), { strict: true });
  const members = [...found.members, ...found.unproven].flatMap((pid) => {
    const stat = readProcStat(pid);
    return stat ? [{ pid, startTime: stat.startTime }] : [];
  });
  // Off Linux (no /proc) the members cannot be listed: the group's own check stands in.
  const gone = members.length === 0 ? () => !ownGroupAlive(group) : () => members.every((m) => !inGroup(m, group.pgid));
  signalGroup(group.pgid, 'SIGTERM');
  if (await waitUntil(gone, graceMs)) return 'terminated';
  if (!gone()) signalGroup(group.pgid, 'SIGKILL');
  return (await waitUntil(gone, 5000)) ? 'killed' : 'stuck';
}

/** The process still runs (the same one: its start time) and is still in that group. */
function inGroup(member: { pid: number; startTime: string }, pgid: number): boolean {
  const stat = readProcStat(member.pid);
  return stat !== undefined && stat.state !== 'Z' && stat.state !== 'X' && stat.startTime === member.startTime && stat.pgrp === pgid;
}

async function waitUntil(done: () => boolean, ms: number): Promise<boolean> {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    if (done()) return true;
    await sleep(50);
  }
  return done();
}
