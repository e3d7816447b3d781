import { spawn, spawnSync } from 'node:child_process';
import { mkdir, mkdtemp, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { cleanAbandonedJobs } from './buildspec-job.js';

let work: string;
beforeEach(async () => {
  work = await mkdtemp(join(tmpdir(), 'cv-work-'));
});
afterEach(() => rm(work, { recursive: true, force: true }));

const exists = (p: string) => stat(p).then(() => true, () => false);

async function jobDir(name: string, ownerPid: number): Promise<string> {
  const dir = join(work, name);
  await mkdir(join(dir, 'src'), { recursive: true });
  await writeFile(join(dir, 'src', 'file'), 'x');
  await writeFile(`${dir}.owner`, JSON.stringify({ pid: ownerPid }));
  return dir;
}

describe('cleanAbandonedJobs', () => {
  it('removes the directories of workers that died, keeps those of live ones', async () => {
    const dead = spawnSync('true').pid!;
    const live = spawn('sleep', ['30'], { stdio: 'ignore' });
    try {
      const abandoned = await jobDir('run-a.Build.1-aaaa', dead);
      const running = await jobDir('run-b.Build.1-bbbb', live.pid!);
      const report = await cleanAbandonedJobs(work);
      expect(report.removed).toEqual([abandoned]);
      expect(await exists(abandoned)).toBe(false);
      expect(await exists(`${abandoned}.owner`)).toBe(false);
      expect(await exists(join(running, 'src', 'file'))).toBe(true);
    } finally {
      live.kill('SIGKILL');
    }
  });
});
