import { spawn } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { groupAlive, processStartTime } from '@conveyor/procfs';
import { ownGroupAlive, stopGroup } from '../src/adapters/process-group.js';

describe('process groups', () => {
  it('stops every process of a group, escalating to SIGKILL for one that ignores SIGTERM', async () => {
    const child = spawn('bash', ['-c', "trap '' TERM; sleep 60 & sleep 60 & wait"], { detached: true, stdio: 'ignore' });
    const pgid = child.pid!;
    await new Promise((r) => setTimeout(r, 200));
    expect(groupAlive(pgid)).toBe(true);
    expect(await stopGroup(pgid, 300)).toBe('killed');
    expect(groupAlive(pgid)).toBe(false);
    expect(await stopGroup(pgid, 300)).toBe('not-running');
  });

  it('terminates a well-behaved group with SIGTERM', async () => {
    const child = spawn('bash', ['-c', 'sleep 60 & wait'], { detached: true, stdio: 'ignore' });
    await new Promise((r) => setTimeout(r, 100));
    expect(await stopGroup(child.pid!, 5000)).toBe('terminated');
  });

  it('does not take a recycled pid for the process it recorded', async () => {
    const child = spawn('sleep', ['60'], { detached: true, stdio: 'ignore' });
    const pid = child.pid!;
    const start = processStartTime(pid);
    expect(start).toMatch(/^\d+$/);
    expect(ownGroupAlive(pid, start)).toBe(true);
    expect(ownGroupAlive(pid, `${start}0`)).toBe(false);
    await stopGroup(pid, 1000);
  });
});
