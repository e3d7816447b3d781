import { spawn, spawnSync } from 'node:child_process';
import { mkdir, mkdtemp, rm, stat, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it, onTestFinished } from 'vitest';
import { cleanAbandonedJobs } from './buildspec-job.js';
import { currentOwner, type ProcessOwner } from './orphans.js';

let work: string;
beforeEach(async () => {
  work = await mkdtemp(join(tmpdir(), 'cv-work-'));
});
afterEach(() => rm(work, { recursive: true, force: true }));

const exists = (p: string) => stat(p).then(() => true, () => false);

/** The pid of a process that has exited: a dead worker's. */
const deadPid = () => spawnSync('true').pid!;

/** The pid of a process that lives until the test ends: a live worker's. */
function livePid(): number {
  const live = spawn('sleep', ['30'], { stdio: 'ignore' });
  onTestFinished(() => void live.kill('SIGKILL'));
  return live.pid!;
}

async function jobDir(name: string, owner: ProcessOwner): Promise<string> {
  const dir = join(work, name);
  await mkdir(join(dir, 'src'), { recursive: true });
  await writeFile(join(dir, 'src', 'file'), 'x');
  await writeFile(`${dir}.owner`, JSON.stringify(owner));
  return dir;
}

describe('cleanAbandonedJobs', () => {
  it('removes the directories of workers that died, keeps those of live ones', async () => {
    const abandoned = await jobDir('run-a.Build.1-aaaa', { pid: deadPid() });
    const running = await jobDir('run-b.Build.1-bbbb', { pid: livePid() });
    const report = await cleanAbandonedJobs(work);
    expect(report.removed).toEqual([abandoned]);
    expect(await exists(abandoned)).toBe(false);
    expect(await exists(`${abandoned}.owner`)).toBe(false);
    expect(await exists(join(running, 'src', 'file'))).toBe(true);
  });

  it('removes the temporary and shared memory directories of a dead worker\'s job with it (t-/m-<suffix>), keeps a live one\'s', async () => {
    const abandoned = await jobDir('run-i.Build.1-0123abcd', { pid: deadPid() });
    const running = await jobDir('run-j.Build.1-4567cdef', { pid: livePid() });
    for (const suffix of ['0123abcd', '4567cdef']) {
      for (const kind of ['t', 'm']) {
        await mkdir(join(work, `${kind}-${suffix}`));
        await writeFile(join(work, `${kind}-${suffix}`, 'left'), 'x');
      }
    }
    const report = await cleanAbandonedJobs(work);
    expect(report.removed).toEqual([abandoned]);
    expect(await exists(join(work, 't-0123abcd'))).toBe(false);
    expect(await exists(join(work, 'm-0123abcd'))).toBe(false);
    expect(await exists(join(work, 't-4567cdef', 'left'))).toBe(true);
    expect(await exists(join(work, 'm-4567cdef', 'left'))).toBe(true);
    expect(await exists(join(running, 'src', 'file'))).toBe(true);
  });

  it('removes the directory of a worker whose owner file is truncated or not a record, and does not stop on it', async () => {
    const old = new Date(Date.now() - 60_000);
    const dirs = [];
    for (const [name, text] of [['run-e.Build.1-eeee', ''], ['run-f.Build.1-ffff', 'null'], ['run-g.Build.1-gggg', '{"pid":"x"}']] as const) {
      const dir = await jobDir(name, { pid: 0 });
      await writeFile(`${dir}.owner`, text);
      await utimes(`${dir}.owner`, old, old);
      dirs.push(dir);
    }
    // Truncated but just written: a live worker may be writing it; left alone.
    const fresh = await jobDir('run-h.Build.1-hhhh', { pid: 0 });
    await writeFile(`${fresh}.owner`, '');
    const report = await cleanAbandonedJobs(work);
    expect([...report.removed].sort()).toEqual(dirs.sort());
    expect(await exists(join(fresh, 'src', 'file'))).toBe(true);
  });

  it('removes the directory of an earlier worker that had this very pid (a restarted container), keeps its own', async () => {
    const me = currentOwner();
    const mine = await jobDir('run-c.Build.1-cccc', me);
    // Same pid, another process: the worker before a container restart, whose node was PID 1 too.
    const earlier = await jobDir('run-d.Build.1-dddd', { ...me, startTime: me.startTime === undefined ? undefined : `${me.startTime}0` });
    const report = await cleanAbandonedJobs(work);
    if (me.startTime !== undefined) expect(report.removed).toEqual([earlier]);
    expect(await exists(join(mine, 'src', 'file'))).toBe(true);
  });
});
