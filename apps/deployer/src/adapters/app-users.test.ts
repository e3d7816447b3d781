import { chmod, mkdir, mkdtemp, readFile, rm, stat, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { resolveAppUsers } from './app-users.js';

let root: string;
beforeEach(async () => {
  root = await mkdtemp(join(tmpdir(), 'cv-app-users-'));
  await chmod(root, 0o755);
});
afterEach(() => rm(root, { recursive: true, force: true }));

const FIRST = 2_000_007_000;

describe.runIf(process.getuid?.() === 0)('app users', () => {
  it('never gives one id to two versions, also when claims race over an orphaned one', async () => {
    const deployDir = join(root, 'deployments');
    await mkdir(deployDir);
    let calls = 0;
    // Uneven kills: the first claimer's check of the orphan takes longer than the second's.
    const kill = async () => {
      await new Promise((r) => setTimeout(r, calls++ === 0 ? 200 : 10));
      return { survivors: [] };
    };
    const { users, warning } = await resolveAppUsers({ deployDir, uids: [FIRST, FIRST + 9], maxProcesses: 64, kill });
    expect(warning).toBeUndefined();
    // Passed through by the versions' users, listed by nobody else.
    expect((await stat(deployDir)).mode & 0o777).toBe(0o711);
    // A claim a dead deploy left an hour ago, its version directory never made.
    const orphan = join(deployDir, '.uids', String(FIRST));
    await writeFile(orphan, 'gone/run-gone-1\n');
    await utimes(orphan, new Date(Date.now() - 3600_000), new Date(Date.now() - 3600_000));
    for (const p of ['alpha', 'beta']) await mkdir(join(deployDir, p, `run-${p}-1`), { recursive: true });
    const [a, b] = await Promise.all([users.claim('alpha', 'run-alpha-1'), users.claim('beta', 'run-beta-1')]);
    expect(a!.uid).not.toBe(b!.uid);
    expect(await readFile(join(deployDir, '.uids', String(a!.uid)), 'utf8')).toBe('alpha/run-alpha-1\n');
    expect(await readFile(join(deployDir, '.uids', String(b!.uid)), 'utf8')).toBe('beta/run-beta-1\n');
    // A claim is found again, not made twice.
    expect((await users.claim('alpha', 'run-alpha-1'))!.uid).toBe(a!.uid);
  });

  it('keeps the id of a version whose processes survive being killed, and frees it once they are gone', async () => {
    const deployDir = join(root, 'deployments');
    let survivors = [4242];
    const { users } = await resolveAppUsers({ deployDir, uids: [FIRST + 20, FIRST + 29], maxProcesses: 64, kill: async () => ({ survivors }) });
    await mkdir(join(deployDir, 'shop', 'run-shop-1'), { recursive: true });
    const user = await users.claim('shop', 'run-shop-1');
    expect(await users.stopAll('shop', 'run-shop-1')).toBe(false);
    await users.release('shop', 'run-shop-1');
    expect(await readFile(join(deployDir, '.uids', String(user!.uid)), 'utf8')).toBe('shop/run-shop-1\n');
    survivors = [];
    expect(await users.stopAll('shop', 'run-shop-1')).toBe(true);
    await users.release('shop', 'run-shop-1');
    await expect(readFile(join(deployDir, '.uids', String(user!.uid)), 'utf8')).rejects.toThrow(/ENOENT/);
  });
});
