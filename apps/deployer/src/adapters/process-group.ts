import { readdir, readFile } from 'node:fs/promises';

export interface ProcStat {
  state: string;
  pgrp: number;
  /** Clock ticks since boot at which the process started: with the pid, a process's identity. */
  startTime: string;
}

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

const HAS_PROC = process.platform === 'linux';

async function procStat(pid: number | string): Promise<ProcStat | undefined> {
  try {
    return parseProcStat(await readFile(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return undefined;
  }
}

/** Kernel start time of `pid` (Linux only), recorded at spawn to recognise the process later. */
export async function processStartTime(pid: number): Promise<string | undefined> {
  return HAS_PROC ? (await procStat(pid))?.startTime : undefined;
}

function signalGroup(pgid: number, signal: NodeJS.Signals | 0): boolean {
  try {
    process.kill(-pgid, signal);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * True while any non-zombie process is in group `pgid`. On Linux /proc is scanned: a zombie nobody reaps
 * (PID 1 in many containers) must not count as a running deployment.
 */
export async function groupAlive(pgid: number): Promise<boolean> {
  if (!HAS_PROC) return signalGroup(pgid, 0);
  if (!signalGroup(pgid, 0)) return false;
  const leader = await procStat(pgid);
  if (leader && leader.pgrp === pgid && leader.state !== 'Z' && leader.state !== 'X') return true;
  const entries = await readdir('/proc').catch(() => [] as string[]);
  for (const entry of entries) {
    if (!/^\d+$/.test(entry)) continue;
    const stat = await procStat(entry);
    if (stat && stat.pgrp === pgid && stat.state !== 'Z' && stat.state !== 'X') return true;
  }
  return false;
}

/**
 * Whether the group recorded as (`pgid`, leader start time `procStart`) is still the one we started:
 * a living leader with another start time means the pid was recycled and the group is someone else's.
 */
export async function ownGroupAlive(pgid: number, procStart: string | undefined): Promise<boolean> {
  if (pgid <= 1) return false;
  if (HAS_PROC) {
    // On Linux a record must name the leader's start time: without it, a recycled pid could be anyone's.
    if (procStart === undefined) return false;
    const leader = await procStat(pgid);
    if (leader && leader.state !== 'Z' && leader.startTime !== procStart) return false;
  }
  return groupAlive(pgid);
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function waitGone(pgid: number, ms: number): Promise<boolean> {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    if (!(await groupAlive(pgid))) return true;
    await sleep(50);
  }
  return !(await groupAlive(pgid));
}

/** SIGTERM to the whole group, SIGKILL after `graceMs`; resolves once the group is gone (or gives up after 5 s more). */
export async function stopGroup(pgid: number, graceMs: number): Promise<'terminated' | 'killed' | 'not-running' | 'stuck'> {
  if (!(await groupAlive(pgid))) return 'not-running';
  signalGroup(pgid, 'SIGTERM');
  if (await waitGone(pgid, graceMs)) return 'terminated';
  signalGroup(pgid, 'SIGKILL');
  return (await waitGone(pgid, 5000)) ? 'killed' : 'stuck';
}
