import { readdir, readFile, rm } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { bootId, groupIsOurs, processIsOurs, processStartTime, type ProcessIdentity } from '@conveyor/procfs';
import { createFile, ownPrivateDir, readOwnedFile } from './safe-files.js';

/**
 * One record per shell a session starts, kept in the session's control directory while the shell
 * may live: `{pid, pgid, ownerPid}` plus what it takes to tell a recycled pid from ours (boot id
 * and process start times, Linux only). A worker that crashed leaves them behind; reapOrphans
 * kills those process groups at the next start-up. A record is the worker's own file (0600) in its
 * own control directory, out of the build's reach: it names a process group to kill, as root.
 */
export interface ShellRecord {
  pid: number;
  pgid: number;
  ownerPid: number;
  ownerStartTime?: string;
  startTime?: string;
  bootId?: string;
  /** `CONVEYOR_BUILD_MARK=<mark>`, which the shell and all it starts carry: the group's proof once its leader is gone. */
  mark?: string;
}

/** The environment variable every process of a build carries (its value one per build session). */
export const BUILD_MARK = 'CONVEYOR_BUILD_MARK';

const RECORD = /^shell-\d+\.json$/;

export async function writeShellRecord(controlDir: string, index: number, pid: number, mark?: string): Promise<string> {
  const record: ShellRecord = {
    pid,
    pgid: pid,
    ownerPid: process.pid,
    ownerStartTime: processStartTime(process.pid),
    startTime: processStartTime(pid),
    bootId: bootId(),
    ...(mark === undefined ? {} : { mark: `${BUILD_MARK}=${mark}` }),
  };
  const path = join(controlDir, `shell-${index}.json`);
  await createFile(path, JSON.stringify(record));
  return path;
}

/** A process that owns something on disk, told apart from a later process given the same pid. */
export type ProcessOwner = ProcessIdentity;

/** This process, as an owner. */
export function currentOwner(): ProcessOwner {
  return { pid: process.pid, startTime: processStartTime(process.pid), bootId: bootId() };
}

function ownerAlive(r: ShellRecord): boolean {
  return processIsOurs({ pid: r.ownerPid, startTime: r.ownerStartTime, bootId: r.bootId });
}

/**
 * The group is still the one we started: same boot, and its leader, if there, is the same process;
 * with the leader gone, a member carrying the session's mark (procfs groupMembersOf).
 */
function groupStillOurs(r: ShellRecord): boolean {
  return groupIsOurs({ pid: r.pgid, startTime: r.startTime, bootId: r.bootId, ...(typeof r.mark === 'string' ? { mark: r.mark } : {}) });
}

async function recordsIn(dir: string): Promise<string[]> {
  // Believed only from a directory of this process's own: a build's job directory (its user owns it)
  // may hold a forged record naming any process group.
  if (!(await ownPrivateDir(dir))) return [];
  const entries = await readdir(dir, { withFileTypes: true }).catch(() => []);
  return entries.filter((e) => e.isFile() && RECORD.test(e.name)).map((e) => join(dir, e.name));
}

/** A record is a small regular file of this process's user, read without following a symlink. */
async function readRecord(path: string): Promise<ShellRecord | undefined> {
  try {
    const r = JSON.parse((await readOwnedFile(path, { owner: process.getuid?.(), maxBytes: 64 * 1024 })).toString('utf8')) as ShellRecord;
    return Number.isInteger(r.pid) && Number.isInteger(r.pgid) && r.pgid > 1 && Number.isInteger(r.ownerPid) ? r : undefined;
  } catch {
    return undefined;
  }
}

export interface ReapReport {
  /** Process groups that were killed. */
  killed: number[];
  /** Control directories removed because their owner is gone. */
  removed: string[];
  /** Processes outside those groups that carried a dead session's mark (setsid daemons), killed too; absent when none. */
  strays?: number;
}

/** A record's mark, when it is one a session of ours gives (`CONVEYOR_BUILD_MARK=<uuid>`): the value to kill by. */
function markValue(mark: unknown): string | undefined {
  if (typeof mark !== 'string' || !mark.startsWith(`${BUILD_MARK}=`)) return undefined;
  const value = mark.slice(BUILD_MARK.length + 1);
  // Never an empty or short value: killMarked kills every process that carries it.
  return /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/.test(value) ? value : undefined;
}

/**
 * Kills the process groups left by sessions whose owner process is dead, and what those sessions
 * started outside their groups (processes carrying a session's mark: killMarked), and removes their
 * control directories. Looks at `controlRoot` itself and its direct subdirectories (a worker
 * keeps `<root>/<job>/` workspaces next to `<root>/<job>.ctl/` control dirs), believing only
 * directories and records of this process's user (ownPrivateDir). Call it at worker start-up,
 * before taking jobs.
 */
export async function reapOrphans(controlRoot: string): Promise<ReapReport> {
  const report: ReapReport = { killed: [], removed: [] };
  /** The marks of dead sessions already swept for (each shell of a session has the session's). */
  const marks = new Set<string>();
  const subdirs = (await readdir(controlRoot, { withFileTypes: true }).catch(() => []))
    .filter((e) => e.isDirectory())
    .map((e) => join(controlRoot, e.name));
  for (const dir of [controlRoot, ...subdirs]) {
    const paths = await recordsIn(dir);
    if (paths.length === 0) continue;
    let ownerGone = true;
    for (const path of paths) {
      const r = await readRecord(path);
      if (r && ownerAlive(r)) {
        ownerGone = false;
        continue;
      }
      if (r && groupStillOurs(r)) {
        try {
          process.kill(-r.pgid, 'SIGKILL');
          report.killed.push(r.pgid);
        } catch {
          // gone between the check and the kill
        }
      }
      // What the build started outside its group (a setsid daemon) still carries the session's mark, as
      // the session's own close would have found it; whether or not the group itself was still there.
      const mark = markValue(r?.mark);
      if (mark !== undefined && !marks.has(mark)) {
        marks.add(mark);
        const strays = await killMarked(BUILD_MARK, mark);
        if (strays > 0) report.strays = (report.strays ?? 0) + strays;
      }
      await rm(path, { force: true });
    }
    if (ownerGone && dir !== controlRoot && basename(dir).endsWith('.ctl')) {
      await rm(dir, { recursive: true, force: true });
      report.removed.push(dir);
    }
  }
  return report;
}

/**
 * Kills (SIGKILL) every process whose environment holds `name=value` (Linux /proc; elsewhere none):
 * what a build started outside its process group (setsid, double fork) still carries the mark.
 */
export async function killMarked(name: string, value: string): Promise<number> {
  const entry = `${name}=${value}`;
  let killed = 0;
  for (const pid of await readdir('/proc').catch(() => [] as string[])) {
    if (!/^\d+$/.test(pid) || Number(pid) === process.pid) continue;
    const environ = await readFile(`/proc/${pid}/environ`, 'latin1').catch(() => '');
    if (!environ.split('\0').includes(entry)) continue;
    try {
      process.kill(Number(pid), 'SIGKILL');
      killed++;
    } catch {
      // exited meanwhile
    }
  }
  return killed;
}
