import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { afterEach, describe, expect, it } from 'vitest';
import { bootId, carriesMark, compareStartTimes, groupAlive, groupIsOurs, groupMembersOf, parseProcStat, pidAlive, processIsOurs, processStartTime, readProcStat } from './procfs.js';

const children: ChildProcess[] = [];
const killGroup = (pgid: number) => {
  try {
    process.kill(-pgid, 'SIGKILL');
  } catch {
    // already gone
  }
};
afterEach(() => {
  for (const c of children.splice(0)) if (c.pid && c.pid > 1) killGroup(c.pid);
});

/** A process group of its own: a leader shell and one sleeping child. */
function group(script: string, mark = 'TEST_GROUP_MARK=1'): number {
  const [name, value] = mark.split('=') as [string, string];
  const child = spawn('bash', ['-c', script], { detached: true, stdio: 'ignore', env: { PATH: process.env.PATH, [name]: value } });
  children.push(child);
  return child.pid!;
}

const until = async (check: () => boolean) => {
  for (let i = 0; i < 200 && !check(); i++) await new Promise((r) => setTimeout(r, 10));
  return check();
};

describe('parseProcStat', () => {
  it('reads state, process group and start time, even with odd command names', () => {
    const line = '4242 (my (weird) app) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 200';
    expect(parseProcStat(line)).toEqual({ state: 'S', pgrp: 4242, startTime: '987654' });
  });

  it('refuses truncated input', () => {
    expect(parseProcStat('4242 (x) S 1')).toBeUndefined();
    expect(parseProcStat('garbage')).toBeUndefined();
  });
});

describe.runIf(process.platform === 'linux')('on Linux', () => {
  it('names this process: its stat, a start time that stays the same, a boot id', () => {
    expect(readProcStat(process.pid)?.state).toMatch(/^[RS]$/);
    expect(processStartTime(process.pid)).toMatch(/^\d+$/);
    expect(processStartTime(process.pid)).toBe(processStartTime(process.pid));
    expect(bootId()).toMatch(/^[0-9a-f-]{36}$/);
  });

  it('tells a living pid from a gone one, and refuses pids that are not one process', () => {
    expect(pidAlive(process.pid)).toBe(true);
    expect(pidAlive(spawnSync('true').pid!)).toBe(false);
    for (const pid of [0, -1, 1.5, Number.NaN]) expect(pidAlive(pid)).toBe(false);
    expect(processStartTime(spawnSync('true').pid!)).toBeUndefined();
  });

  it('sees a group alive while any member runs, after its leader has gone', async () => {
    // The leader exits at once; its background sleep keeps the group (leader's pid = pgid) alive.
    const pgid = group('sleep 30 & exit 0');
    expect(await until(() => readProcStat(pgid)?.state === undefined || readProcStat(pgid)?.state === 'Z')).toBe(true);
    expect(groupAlive(pgid)).toBe(true);
    killGroup(pgid);
    expect(await until(() => !groupAlive(pgid))).toBe(true);
  });

  it('does not count a zombie as running', async () => {
    // A child in a group of its own exits; its parent (which execs sleep) never reaps it: a zombie for ever.
    const parent = spawn('bash', ['-c', 'setsid sleep 0.01 & echo $!; exec sleep 30'], { detached: true, stdio: ['ignore', 'pipe', 'ignore'] });
    children.push(parent);
    const zombie = Number(await new Promise<string>((r) => parent.stdout!.once('data', (d: Buffer) => r(d.toString().trim()))));
    expect(await until(() => readProcStat(zombie)?.state === 'Z')).toBe(true);
    expect(readProcStat(zombie)?.pgrp).toBe(zombie);
    expect(groupAlive(zombie)).toBe(false);
    expect(pidAlive(zombie)).toBe(false);
  });

  it('tells the recorded process and its group from a later one given the same pid, or one of another boot', async () => {
    const pgid = group('exec sleep 30');
    await until(() => processStartTime(pgid) !== undefined);
    const me = { pid: pgid, startTime: processStartTime(pgid), bootId: bootId() };
    expect(processIsOurs(me)).toBe(true);
    expect(groupIsOurs(me, { strict: true })).toBe(true);
    expect(processIsOurs({ ...me, startTime: `${me.startTime}0` })).toBe(false);
    expect(groupIsOurs({ ...me, startTime: `${me.startTime}0` })).toBe(false);
    expect(processIsOurs({ ...me, bootId: '00000000-0000-0000-0000-000000000000' })).toBe(false);
    // No start time recorded: trusted unless strict.
    expect(groupIsOurs({ pid: pgid })).toBe(true);
    expect(groupIsOurs({ pid: pgid }, { strict: true })).toBe(false);
    killGroup(pgid);
    expect(await until(() => !processIsOurs(me) && !groupIsOurs(me))).toBe(true);
  });

  it("finds the recorded group's members once its leader has gone: those that carry its mark and started no earlier than it", async () => {
    // The leader lives long enough to have its start time read, then exits; its sleep stays in the group.
    const pgid = group('sleep 30 & sleep 0.3; exit 0', 'TEST_GROUP_MARK=ours');
    expect(await until(() => processStartTime(pgid) !== undefined)).toBe(true);
    const leader = { pid: pgid, startTime: processStartTime(pgid), bootId: bootId(), mark: 'TEST_GROUP_MARK=ours' };
    // Reaped (this process is its parent): a zombie leader still holds the number, so its group is the recorded one.
    expect(await until(() => readProcStat(pgid) === undefined)).toBe(true);
    const members = groupMembersOf(leader, { strict: true });
    expect(members).toHaveLength(1);
    expect(readProcStat(members[0]!)?.pgrp).toBe(pgid);
    expect(groupIsOurs(leader, { strict: true })).toBe(true);
    // A record of a group started after that member (its number reused, say): the member cannot be one of
    // its processes, so it is not that group, and nothing of it runs.
    const later = { ...leader, startTime: String(BigInt(processStartTime(members[0]!)!) + 1n) };
    expect(groupMembersOf(later)).toEqual([]);
    expect(groupIsOurs(later, { strict: true })).toBe(false);
    // Its leader gone, a group is taken for the recorded one only by the mark its processes carry: another
    // mark (a stranger's group given the number after the recorded one ended), or none, is not it.
    expect(groupMembersOf({ ...leader, mark: 'TEST_GROUP_MARK=theirs' })).toEqual([]);
    expect(groupIsOurs({ ...leader, mark: 'TEST_GROUP_MARK=theirs' }, { strict: true })).toBe(false);
    const { mark: _, ...unmarked } = leader;
    expect(groupMembersOf(unmarked)).toEqual([]);
    expect(carriesMark(members[0]!, 'TEST_GROUP_MARK=ours')).toBe(true);
    // Another boot's record names nothing now.
    expect(groupMembersOf({ ...leader, bootId: '00000000-0000-0000-0000-000000000000' })).toEqual([]);
    killGroup(pgid);
    expect(await until(() => !groupIsOurs(leader))).toBe(true);
  });

  it('never takes a newer process at pid = pgid, nor the group it leads, for the recorded group', async () => {
    const pgid = group('sleep 30 & wait');
    expect(await until(() => processStartTime(pgid) !== undefined)).toBe(true);
    const start = processStartTime(pgid)!;
    // Recorded before this process started: what that record named ended before the number was reused.
    const older = { pid: pgid, startTime: String(BigInt(start) - 1n) };
    expect(groupAlive(pgid)).toBe(true);
    expect(groupMembersOf(older)).toEqual([]);
    expect(groupIsOurs(older)).toBe(false);
    expect(groupMembersOf({ pid: pgid, startTime: start }).length).toBeGreaterThanOrEqual(1);
  });

  it('compares start times as numbers, not as text', () => {
    expect(compareStartTimes('999', '1000')).toBe(-1);
    expect(compareStartTimes('1000', '999')).toBe(1);
    expect(compareStartTimes('12345678901234567890', '12345678901234567890')).toBe(0);
  });

  it('never treats pgid 0 or 1 as a group of ours (kill(0) and kill(-1) would reach everyone)', () => {
    expect(groupMembersOf({ pid: 0 })).toEqual([]);
    expect(groupMembersOf({ pid: 1 })).toEqual([]);
    expect(groupAlive(0)).toBe(false);
    expect(groupAlive(1)).toBe(false);
  });
});
