import { spawn, spawnSync } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { existsSync } from 'node:fs';
import { chmod, chown, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { bootId, groupAlive, processStartTime } from '@conveyor/procfs';
import { BUILD_MARK, reapOrphans, type ShellRecord } from './orphans.js';

const isRoot = process.getuid?.() === 0;

let root: string;
const started: number[] = [];

beforeEach(async () => {
  root = await mkdtemp(join(tmpdir(), 'cv-reap-'));
});
afterEach(async () => {
  for (const pgid of started.splice(0)) {
    try {
      process.kill(-pgid, 'SIGKILL');
    } catch {
      // already gone
    }
  }
  await rm(root, { recursive: true, force: true });
});

/** A process group of its own (a shell with a child), as a build shell would be. */
async function startGroup(env: NodeJS.ProcessEnv = process.env): Promise<number> {
  const child = spawn('sh', ['-c', 'sleep 100 & sleep 100'], { detached: true, stdio: 'ignore', env });
  await new Promise((r) => child.once('spawn', r));
  child.unref();
  started.push(child.pid!);
  return child.pid!;
}

/** The pid of a process that has exited: an owner that crashed. */
async function deadPid(): Promise<number> {
  const child = spawn('true');
  await new Promise((r) => child.once('exit', r));
  return child.pid!;
}

async function writeRecord(dir: string, record: ShellRecord): Promise<void> {
  await mkdir(dir, { recursive: true });
  await writeFile(join(dir, 'shell-0.json'), JSON.stringify(record));
}

async function waitGone(pgid: number): Promise<boolean> {
  for (let i = 0; i < 40 && groupAlive(pgid); i += 1) await new Promise((r) => setTimeout(r, 25));
  return !groupAlive(pgid);
}

describe('reapOrphans', () => {
  it('kills the process group of a session whose owner died, and removes its control dir', async () => {
    const pgid = await startGroup();
    const ctl = join(root, 'job-1.ctl');
    await writeRecord(ctl, { pid: pgid, pgid, ownerPid: await deadPid(), startTime: processStartTime(pgid) });
    expect(groupAlive(pgid)).toBe(true);
    const report = await reapOrphans(root);
    expect(report.killed).toEqual([pgid]);
    expect(report.removed).toEqual([ctl]);
    expect(await waitGone(pgid)).toBe(true);
    expect(existsSync(ctl)).toBe(false);
  });

  it("kills what a dead session started outside its group (a setsid daemon carrying the session's mark), and nothing that does not carry it", async () => {
    const value = randomUUID();
    const env = { ...process.env, [BUILD_MARK]: value };
    const pgid = await startGroup(env);
    // Its own session and group, as `setsid daemon &` in a build makes it; it outlived the worker's kill -9.
    const daemon = await startGroup(env);
    const other = await startGroup({ ...process.env, [BUILD_MARK]: randomUUID() });
    const ctl = join(root, 'job-5.ctl');
    await writeRecord(ctl, { pid: pgid, pgid, ownerPid: await deadPid(), startTime: processStartTime(pgid), mark: `${BUILD_MARK}=${value}` });
    const report = await reapOrphans(root);
    expect(report.killed).toEqual([pgid]);
    expect(report.strays).toBeGreaterThanOrEqual(2); // the daemon's shell and its sleep (and any of the group not yet gone)
    expect(await waitGone(pgid)).toBe(true);
    expect(await waitGone(daemon)).toBe(true);
    expect(groupAlive(other)).toBe(true);
  });

  it('leaves a session alone while its owner lives', async () => {
    const pgid = await startGroup();
    const ctl = join(root, 'job-2.ctl');
    await writeRecord(ctl, { pid: pgid, pgid, ownerPid: process.pid, ownerStartTime: processStartTime(process.pid) });
    const report = await reapOrphans(root);
    expect(report).toEqual({ killed: [], removed: [] });
    expect(groupAlive(pgid)).toBe(true);
    expect(existsSync(join(ctl, 'shell-0.json'))).toBe(true);
  });

  it('does not kill a group whose leader is another process now (pid reused)', async () => {
    const pgid = await startGroup();
    await writeRecord(join(root, 'job-3.ctl'), { pid: pgid, pgid, ownerPid: await deadPid(), startTime: '1' });
    const report = await reapOrphans(root);
    expect(report.killed).toEqual([]);
    expect(groupAlive(pgid)).toBe(true);
  });

  it('does not kill anything recorded before a reboot', async () => {
    const pgid = await startGroup();
    await writeRecord(join(root, 'job-4.ctl'), { pid: pgid, pgid, ownerPid: await deadPid(), bootId: 'another-boot' });
    expect((await reapOrphans(root)).killed).toEqual([]);
    expect(groupAlive(pgid)).toBe(true);
  });

  it.runIf(isRoot)('believes no record a build wrote: one forged in its job directory kills nothing', async () => {
    const pgid = await startGroup();
    // A job directory belongs to the build's user; the worker that ran it died.
    await chmod(root, 0o755);
    const job = join(root, 'run-1.Build.1-abcd1234');
    await mkdir(job);
    await chown(job, 65534, 65534);
    // The build names a process group that is not its own, with all it takes to pass for ours.
    const forged: ShellRecord = { pid: pgid, pgid, ownerPid: await deadPid(), startTime: processStartTime(pgid), bootId: bootId() };
    const wrote = spawnSync('sh', ['-c', 'printf %s "$1" > "$2"', 'sh', JSON.stringify(forged), join(job, 'shell-0.json')], { uid: 65534, gid: 65534 });
    expect(wrote.status).toBe(0);
    expect(await reapOrphans(root)).toEqual({ killed: [], removed: [] });
    expect(groupAlive(pgid)).toBe(true);
  });

  it('ignores a missing root and unreadable records', async () => {
    expect(await reapOrphans(join(root, 'missing'))).toEqual({ killed: [], removed: [] });
    await mkdir(join(root, 'bad.ctl'));
    await writeFile(join(root, 'bad.ctl', 'shell-0.json'), '{not json');
    expect(await reapOrphans(root)).toEqual({ killed: [], removed: [join(root, 'bad.ctl')] });
  });
});
