import { spawn } from 'node:child_process';
import { afterEach, describe, expect, it } from 'vitest';
import { bootId, groupAlive, pidAlive, processStartTime, readProcStat } from '@conveyor/procfs';
import { ownGroupAlive, stopGroup, unprovenMembers, type RecordedGroup } from '../src/adapters/process-group.js';

const leftOver: number[] = [];
afterEach(() => {
  for (const pgid of leftOver.splice(0)) {
    try {
      process.kill(-pgid, 'SIGKILL');
    } catch {
      // gone
    }
  }
});

/**
 * A detached `bash -c script`: a process group of its own, recorded as the deployer records a version's,
 * started with `CONVEYOR_RUN_ID=<runId>` (and `CONVEYOR_DEPLOY_MARK=<mark>`, given one) as every version is (childEnv).
 */
function startGroup(script: string, runId = 'run-process-group', mark?: string): RecordedGroup {
  const env = { PATH: process.env.PATH, CONVEYOR_RUN_ID: runId, ...(mark ? { CONVEYOR_DEPLOY_MARK: mark } : {}) };
  const child = spawn('bash', ['-c', script], { detached: true, stdio: 'ignore', env });
  const pgid = child.pid!;
  leftOver.push(pgid);
  return { pgid, procStart: processStartTime(pgid), bootId: bootId(), runId, ...(mark ? { mark } : {}) };
}

const until = async (check: () => boolean, ms = 5000) => {
  for (const deadline = Date.now() + ms; !check() && Date.now() < deadline; ) await new Promise((r) => setTimeout(r, 20));
  return check();
};

/** The running processes whose process group is `pgid`. */
const membersOf = async (pgid: number) => {
  const { readdirSync } = await import('node:fs');
  return readdirSync('/proc')
    .filter((n) => /^\d+$/.test(n))
    .map(Number)
    .filter((pid) => {
      const stat = readProcStat(pid);
      return stat !== undefined && stat.pgrp === pgid && stat.state !== 'Z';
    });
};

describe('process groups', () => {
  it('stops every process of a group, escalating to SIGKILL for one that ignores SIGTERM', async () => {
    const group = startGroup("trap '' TERM; sleep 60 & sleep 60 & wait");
    await new Promise((r) => setTimeout(r, 200));
    expect(groupAlive(group.pgid)).toBe(true);
    expect(await stopGroup(group, 300)).toBe('killed');
    expect(groupAlive(group.pgid)).toBe(false);
    expect(await stopGroup(group, 300)).toBe('not-running');
  });

  it('terminates a well-behaved group with SIGTERM', async () => {
    const group = startGroup('sleep 60 & wait');
    await new Promise((r) => setTimeout(r, 100));
    expect(await stopGroup(group, 5000)).toBe('terminated');
  });

  it('does not take a recycled pid for the process it recorded', async () => {
    const group = startGroup('exec sleep 60');
    expect(group.procStart).toMatch(/^\d+$/);
    expect(ownGroupAlive(group)).toBe(true);
    expect(ownGroupAlive({ ...group, procStart: `${group.procStart}0` })).toBe(false);
    expect(ownGroupAlive({ ...group, bootId: '00000000-0000-0000-0000-000000000000' })).toBe(false);
    await stopGroup(group, 1000);
  });

  it('finds and stops a group whose leader exited while a member still runs', async () => {
    // The leader's start time is read at spawn (as the deployer does); it then exits, its sleep stays.
    const group = startGroup('sleep 60 & sleep 0.2; exit 0');
    expect(group.procStart).toMatch(/^\d+$/);
    expect(await until(() => !pidAlive(group.pgid))).toBe(true);
    const [member] = await membersOf(group.pgid);
    expect(member).toBeDefined();
    expect(member).not.toBe(group.pgid);
    expect(ownGroupAlive(group)).toBe(true);
    expect(await stopGroup(group, 2000)).toBe('terminated');
    expect(pidAlive(member!)).toBe(false);
    expect(ownGroupAlive(group)).toBe(false);
  });

  it("neither takes nor signals a newer group given the record's number once its leader is gone: another run's processes", async () => {
    // A stranger's group, its leader gone, a member still running: what the record of an older version
    // meets once its whole group ended and the number went to a newer process that made a group of it
    // and exited (a daemon's double fork). Every start time in it is later than the record's leader's.
    const stranger = startGroup('sleep 60 & sleep 0.2; exit 0', 'run-stranger');
    expect(await until(() => readProcStat(stranger.pgid) === undefined)).toBe(true); // reaped: no zombie holds the number
    const [member] = await membersOf(stranger.pgid);
    expect(member).toBeDefined();
    // An older record (its leader started before this test process did) of another run.
    const record: RecordedGroup = { pgid: stranger.pgid, procStart: processStartTime(process.pid)!, bootId: bootId(), runId: 'run-older' };
    expect(ownGroupAlive(record)).toBe(false);
    expect(await stopGroup(record, 300)).toBe('not-running');
    expect(pidAlive(member!)).toBe(true);
    // Nor one with no run to tell its processes by.
    const { runId: _, ...unmarked } = record;
    expect(ownGroupAlive(unmarked)).toBe(false);
    expect(await stopGroup(unmarked, 300)).toBe('not-running');
    expect(pidAlive(member!)).toBe(true);
    // The same record, of the run that started them, is theirs.
    expect(ownGroupAlive({ ...record, runId: 'run-stranger' })).toBe(true);
  });

  it('neither takes nor signals a newer process found at pid = pgid, nor the group it leads', async () => {
    const newer = startGroup('sleep 60 & wait');
    await new Promise((r) => setTimeout(r, 100));
    // A record whose leader started before the process now at that pid: its group ended, the number was reused.
    const record: RecordedGroup = { pgid: newer.pgid, procStart: String(BigInt(newer.procStart!) - 1n), bootId: bootId() };
    expect(ownGroupAlive(record)).toBe(false);
    expect(await stopGroup(record, 300)).toBe('not-running');
    expect(groupAlive(newer.pgid)).toBe(true);
    expect(pidAlive(newer.pgid)).toBe(true);
  });

  it("tells a version's processes by its own mark, not its run's: another attempt of the run, or a member that lost the mark, is named and left alone", async () => {
    const record = startGroup('sleep 60 & env -i sleep 61 & sleep 0.2; exit 0', 'run-marked', '6b1f2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d');
    const { pgid } = record;
    expect(await until(() => readProcStat(pgid) === undefined)).toBe(true);
    const members = await membersOf(pgid);
    expect(members).toHaveLength(2);
    // The one started with `env -i` shows no mark: not taken, named.
    const unproven = unprovenMembers(record);
    expect(unproven).toHaveLength(1);
    await expect((await import('node:fs/promises')).readFile(`/proc/${unproven[0]}/cmdline`, 'utf8')).resolves.toContain('61');
    // Another attempt of the same run has another mark: the group is not its.
    expect(ownGroupAlive({ ...record, mark: '00000000-0000-4000-8000-000000000000' })).toBe(false);
    expect(ownGroupAlive(record)).toBe(true);
    expect(await stopGroup(record, 2000)).toBe('terminated');
    // The marked member stopped with the group; the unproven one was signalled too, as a member of the
    // group the version's proven members are in (the number cannot be a stranger's while they run).
    for (const pid of members) expect(await until(() => !pidAlive(pid))).toBe(true);
  });

  it('stops, SIGKILL included, a member that lost the mark and ignores SIGTERM, as long as it shares the number with the proven ones', async () => {
    // The marked sleep ends on SIGTERM; the unmarked one ignores it (an ignored signal stays so across exec).
    const record = startGroup(`sleep 60 & env -i sh -c "trap '' TERM; exec sleep 62" & sleep 0.2; exit 0`, 'run-stubborn', '7c2e3d4f-5a6b-4c7d-8e9f-0a1b2c3d4e5f');
    const { pgid } = record;
    expect(await until(() => readProcStat(pgid) === undefined)).toBe(true);
    const members = await membersOf(pgid);
    expect(members).toHaveLength(2);
    expect(await stopGroup(record, 500)).toBe('killed');
    for (const pid of members) expect(pidAlive(pid)).toBe(false);
    expect(unprovenMembers(record)).toEqual([]);
  });
});

