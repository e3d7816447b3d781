import { readdirSync, readFileSync } from 'node:fs';

/**
 * What Linux's /proc tells of a process, for telling a process we started from a later one given the
 * same pid, and for knowing whether a process group still runs. Off Linux the answers fall back to
 * signal checks (and start times and boot ids are undefined). Reads are synchronous: /proc is in memory.
 */
export interface ProcStat {
  /** R, S, D, Z (zombie), X (dead), … */
  state: string;
  pgrp: number;
  /** Clock ticks since boot at which the process started: with the pid (and the boot), its identity. */
  startTime: string;
}

const HAS_PROC = process.platform === 'linux';

/** Parses `/proc/<pid>/stat`; the command name may hold spaces and parentheses, so split after the last `)`. */
export function parseProcStat(text: string): ProcStat | undefined {
  const close = text.lastIndexOf(')');
  if (close < 0) return undefined;
  const fields = text.slice(close + 2).trim().split(/\s+/);
  const [state, , pgrp] = fields;
  const startTime = fields[19];
  if (!state || !pgrp || !startTime) return undefined;
  return { state, pgrp: Number(pgrp), startTime };
}

function read(path: string): string | undefined {
  try {
    return readFileSync(path, 'utf8');
  } catch {
    return undefined;
  }
}

/** The stat of `pid`, or undefined when it is gone (or off Linux). */
export function readProcStat(pid: number | string): ProcStat | undefined {
  if (!HAS_PROC) return undefined;
  const text = read(`/proc/${pid}/stat`);
  return text === undefined ? undefined : parseProcStat(text);
}

/** Kernel start time of `pid`: record it at spawn to recognise the process later. */
export function processStartTime(pid: number): string | undefined {
  return readProcStat(pid)?.startTime;
}

/** This boot's id: a pid or start time recorded before a reboot names nothing now. */
export function bootId(): string | undefined {
  return HAS_PROC ? read('/proc/sys/kernel/random/boot_id')?.trim() : undefined;
}

/** Signal 0: whether `pid` (or, negative, a process group) exists; EPERM means it does, as someone else's. */
export function signalReaches(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

const running = (stat: ProcStat | undefined): stat is ProcStat => stat !== undefined && stat.state !== 'Z' && stat.state !== 'X';

/** Whether `pid` runs, zombies counting as dead. */
export function pidAlive(pid: number): boolean {
  if (!Number.isInteger(pid) || pid <= 0 || !signalReaches(pid)) return false;
  return !HAS_PROC || running(readProcStat(pid));
}

/**
 * Whether any process of group `pgid` still runs. Zombies do not count: where PID 1 does not reap (a
 * container whose init is node or a supervisor), killed grandchildren linger as zombies for ever, and
 * waiting for them would only end at a deadline.
 */
export function groupAlive(pgid: number): boolean {
  if (!Number.isInteger(pgid) || pgid <= 1 || !signalReaches(-pgid)) return false;
  if (!HAS_PROC) return true;
  const leader = readProcStat(pgid);
  if (running(leader) && leader.pgrp === pgid) return true;
  let pids: string[];
  try {
    pids = readdirSync('/proc');
  } catch {
    return true; // /proc unreadable: the signal check is all there is
  }
  return pids.some((pid) => {
    if (!/^\d+$/.test(pid)) return false;
    const stat = readProcStat(pid);
    return running(stat) && stat.pgrp === pgid;
  });
}

/**
 * The running processes (zombies excluded) whose real, effective or saved user id is `uid`: those a
 * process of that user may signal. All of them, or those of `among`. Linux only (empty elsewhere).
 */
export function processesOfUser(uid: number, among?: readonly number[]): number[] {
  return processesOfUsers(uid, uid, among);
}

/** processesOfUser for every user id from `first` to `last`. */
export function processesOfUsers(first: number, last: number, among?: readonly number[]): number[] {
  if (!HAS_PROC) return [];
  let pids: string[];
  try {
    pids = among ? among.map(String) : readdirSync('/proc');
  } catch {
    return [];
  }
  return pids.flatMap((pid) => {
    if (!/^\d+$/.test(pid)) return [];
    const status = read(`/proc/${pid}/status`);
    const ids = status && /^Uid:\s+(\d+)\s+(\d+)\s+(\d+)/m.exec(status);
    if (!ids || !ids.slice(1, 4).some((id) => Number(id) >= first && Number(id) <= last)) return [];
    // A main thread that exited while other threads run shows the process as a zombie: it still runs.
    const threads = Number(/^Threads:\s+(\d+)/m.exec(status)?.[1] ?? 1);
    return running(readProcStat(pid)) || threads > 1 ? [Number(pid)] : [];
  });
}

/** A process as recorded when it started: enough to tell it from a later process given the same pid. */
export interface ProcessIdentity {
  pid: number;
  /** `processStartTime(pid)` then; off Linux undefined. */
  startTime?: string;
  /** `bootId()` then. */
  bootId?: string;
  /**
   * An environment entry (`NAME=value`) the process was started with and its descendants inherit: the
   * proof that a member of its group is its own once the group's leader is gone (groupMembersOf, rule 3).
   */
  mark?: string;
}

/** Whether `pid` was started with the environment entry `mark` (its /proc environ; unreadable: no). */
export function carriesMark(pid: number | string, mark: string | undefined): boolean {
  if (mark === undefined) return false;
  try {
    return readFileSync(`/proc/${pid}/environ`, 'latin1').split('\0').includes(mark);
  } catch {
    return false;
  }
}

/** Whether the record was made in this boot (unknown counts as yes: nothing to compare). */
function sameBoot(id: ProcessIdentity): boolean {
  const boot = bootId();
  return id.bootId === undefined || boot === undefined || id.bootId === boot;
}

/**
 * Whether the record can still name what runs at its pid: same boot, and the same start time when the
 * process is there to ask. A record without a start time is trusted only when `strict` is off (or off
 * Linux, where there is none to record).
 */
function identityHolds(id: ProcessIdentity, strict: boolean): boolean {
  if (!sameBoot(id)) return false;
  if (id.startTime === undefined) return !(strict && HAS_PROC);
  const now = readProcStat(id.pid);
  return now === undefined || now.state === 'Z' || now.startTime === id.startTime;
}

/** The recorded process still runs: alive, and not a later process given its pid. */
export function processIsOurs(id: ProcessIdentity, opts: { strict?: boolean } = {}): boolean {
  return pidAlive(id.pid) && identityHolds(id, opts.strict ?? false);
}

/** Start times (clock ticks since boot, as /proc prints them) compared as numbers: negative when `a` is earlier. */
export function compareStartTimes(a: string, b: string): number {
  const [x, y] = [BigInt(a), BigInt(b)];
  return x < y ? -1 : x > y ? 1 : 0;
}

/**
 * The running processes (zombies excluded) of the process group the recorded process led, pgid = its
 * pid, found by this rule (Linux):
 *
 * 1. Same boot as the record (when both are known): start times and pids restart at each boot.
 * 2. If a process is at pid = pgid now, it must be the recorded leader (same start time; a zombie keeps
 *    its start time too). Another start time means the number was handed to a newer process, and Linux
 *    hands out a number only once no process has it as its pid, process group or session: the recorded
 *    group has ended, all of it. Nothing is then ours, not even a group that newer process leads.
 * 3. The leader there and ours: the number cannot have been reused, so the members are the running
 *    processes whose pgid is the recorded one (and none started before the leader: a member is the
 *    leader's descendant, or joined the group from inside the session the leader made). Membership is
 *    read from each process's own pgid, never from a pid merely existing.
 * 4. The leader gone (reaped): a group with that number may be ours, its leader exited and a member
 *    still running, or a stranger's, ours having ended and the number since given to a newer process
 *    that made a group of it and exited in turn (a daemon's double fork does). Start times cannot tell
 *    the two apart (the stranger's are later too), so a member counts only when it also carries the
 *    record's `mark` in its environment; without a mark, nothing counts. (A member that replaced its
 *    environment when it exec'd is then missed: callers that can, stop by user as well.)
 *
 * Without a recorded start time, only the pgid is checked (the members of whatever group has that
 * number), unless `strict`. Off Linux: the leader's pid when signal 0 reaches its group, else none.
 */
export function groupMembersOf(id: ProcessIdentity, opts: { strict?: boolean } = {}): number[] {
  return scanGroup(id, opts).members;
}

/**
 * With the recorded leader gone, the running processes of its group number that started no earlier than
 * it but carry no readable mark (groupMembersOf, rule 4): a stranger's group given the number, or members
 * of the recorded one that lost the mark (exec'd with another environment, a title written over it, not
 * dumpable). Neither taken nor signalled; a caller says they are there. Empty when the leader runs.
 */
export function unprovenGroupMembers(id: ProcessIdentity): number[] {
  return scanGroup(id, { strict: true }).unproven;
}

/** Both lists in one pass over /proc: groupMembersOf's and unprovenGroupMembers'. */
export function scanGroup(id: ProcessIdentity, opts: { strict?: boolean } = {}): { members: number[]; unproven: number[] } {
  const none = { members: [], unproven: [] };
  const pgid = id.pid;
  if (!Number.isInteger(pgid) || pgid <= 1 || !sameBoot(id)) return none;
  if (!HAS_PROC) return { members: signalReaches(-pgid) ? [pgid] : [], unproven: [] };
  if (id.startTime === undefined && opts.strict) return none;
  const since = id.startTime;
  let leaderGone = false;
  if (since !== undefined) {
    const leader = readProcStat(pgid);
    if (leader && leader.startTime !== since) return none;
    leaderGone = leader === undefined;
  }
  let pids: string[];
  try {
    pids = readdirSync('/proc');
  } catch {
    return none;
  }
  const members: number[] = [];
  const unproven: number[] = [];
  for (const pid of pids) {
    if (!/^\d+$/.test(pid)) continue;
    const stat = readProcStat(pid);
    if (!running(stat) || stat.pgrp !== pgid) continue;
    if (since !== undefined && compareStartTimes(stat.startTime, since) < 0) continue;
    if (!leaderGone || carriesMark(pid, id.mark)) members.push(Number(pid));
    else unproven.push(Number(pid));
  }
  return { members, unproven };
}

/**
 * The process group the recorded process leads (pgid = its pid) still runs: it has a member by the rule
 * of groupMembersOf (the recorded leader itself, or, the leader gone, a member carrying the record's mark).
 */
export function groupIsOurs(id: ProcessIdentity, opts: { strict?: boolean } = {}): boolean {
  if (!identityHolds(id, opts.strict ?? false)) return false;
  if (!HAS_PROC || id.startTime === undefined) return groupAlive(id.pid);
  if (!Number.isInteger(id.pid) || id.pid <= 1 || !signalReaches(-id.pid)) return false;
  // The common case, without a scan of /proc: the recorded leader itself runs, still in its group.
  const leader = readProcStat(id.pid);
  if (running(leader) && leader.pgrp === id.pid && leader.startTime === id.startTime) return true;
  return groupMembersOf(id, opts).length > 0;
}
