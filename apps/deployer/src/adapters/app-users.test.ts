import { spawn } from 'node:child_process';
import { chmod, mkdir, mkdtemp, readdir, readFile, rm, stat, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { holdFileLock, processesOfUser } from '@conveyor/procfs';
import { checkSetpriv, type BuildUser } from '@conveyor/runner';
import { stopAllDeployments } from '../stop-all.js';
import { resolveAppUsers } from './app-users.js';

let root: string;
/** The host-wide claims of these tests: a directory of their own, so they run beside other tests' deployers. */
let claimsDir: string;
/** Processes started as app users, killed after each test whatever happened. */
let started: number[] = [];
beforeEach(async () => {
  root = await mkdtemp(join(tmpdir(), 'cv-app-users-'));
  await chmod(root, 0o755);
  claimsDir = join(root, 'uid-claims');
  started = [];
});
afterEach(async () => {
  for (const pid of started) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // gone already
    }
  }
  await rm(root, { recursive: true, force: true });
});

// Ids of these tests only (the deployer's integration tests use 2000008000-2000008099).
const FIRST = 2_000_007_000;
const HOUR_AGO = () => new Date(Date.now() - 3600_000);

type Kill = (user: BuildUser) => Promise<{ survivors: number[] }>;
const noKill: Kill = async () => ({ survivors: [] });

async function deployDirOf(name: string): Promise<string> {
  const dir = join(root, name, 'deployments');
  await mkdir(dir, { recursive: true });
  return dir;
}

const appUsers = (deployDir: string, uids: [number, number], kill?: Kill) => resolveAppUsers({ deployDir, claimsDir, uids, maxProcesses: 64, ...(kill ? { kill } : {}) });

/** The host-wide claim of `uid`, as written on disk. */
const claimOf = async (uid: number) => {
  const { deployDir, version, pidns } = JSON.parse(await readFile(join(claimsDir, String(uid)), 'utf8')) as { deployDir: string; version: string; pidns?: string };
  // Every claim names the PID namespace it was made in: this test's.
  expect(pidns).toMatch(/^pid:\[\d+\]$/);
  return { deployDir, version };
};

/** A real process running as `uid` (root switches to it through setpriv). */
async function runAs(uid: number): Promise<number> {
  const child = spawn(checkSetpriv(), [`--reuid=${uid}`, `--regid=${uid}`, '--clear-groups', '--', 'sleep', '600'], { cwd: '/', detached: true, stdio: 'ignore' });
  child.unref();
  started.push(child.pid!);
  await expect.poll(() => processesOfUser(uid), { timeout: 5000, interval: 20 }).toEqual([child.pid]);
  return child.pid!;
}

describe.runIf(process.getuid?.() === 0)('app users', () => {
  it('never gives one id to two versions, also when claims race over an orphaned one', async () => {
    const deployDir = await deployDirOf('main');
    let calls = 0;
    // Uneven kills: the first claimer's check of the orphan takes longer than the second's.
    const kill = async () => {
      await new Promise((r) => setTimeout(r, calls++ === 0 ? 200 : 10));
      return { survivors: [] };
    };
    const { users, warning } = await appUsers(deployDir, [FIRST, FIRST + 9], kill);
    expect(warning).toBeUndefined();
    // Passed through by the versions' users, listed by nobody else.
    expect((await stat(deployDir)).mode & 0o777).toBe(0o711);
    // Only root may read or change who holds which id.
    expect((await stat(claimsDir)).mode & 0o777).toBe(0o700);
    // A claim a dead deploy left an hour ago, its version directory gone.
    await mkdir(join(deployDir, 'gone', 'run-gone-1'), { recursive: true });
    expect((await users.claim('gone', 'run-gone-1'))!.uid).toBe(FIRST);
    await rm(join(deployDir, 'gone'), { recursive: true });
    await utimes(join(claimsDir, String(FIRST)), HOUR_AGO(), HOUR_AGO());
    for (const p of ['alpha', 'beta']) await mkdir(join(deployDir, p, `run-${p}-1`), { recursive: true });
    const [a, b] = await Promise.all([users.claim('alpha', 'run-alpha-1'), users.claim('beta', 'run-beta-1')]);
    expect(a!.uid).not.toBe(b!.uid);
    expect(await claimOf(a!.uid)).toEqual({ deployDir, version: 'alpha/run-alpha-1' });
    expect(await claimOf(b!.uid)).toEqual({ deployDir, version: 'beta/run-beta-1' });
    // A claim is found again, not made twice.
    expect((await users.claim('alpha', 'run-alpha-1'))!.uid).toBe(a!.uid);
  });

  it('keeps the id of a version whose processes survive being killed, and frees it once they are gone', async () => {
    const deployDir = await deployDirOf('main');
    let survivors = [4242];
    const { users } = await appUsers(deployDir, [FIRST + 20, FIRST + 29], async () => ({ survivors }));
    await mkdir(join(deployDir, 'shop', 'run-shop-1'), { recursive: true });
    const user = await users.claim('shop', 'run-shop-1');
    expect(await users.stopAll('shop', 'run-shop-1')).toBe(false);
    await users.release('shop', 'run-shop-1');
    expect(await claimOf(user!.uid)).toEqual({ deployDir, version: 'shop/run-shop-1' });
    survivors = [];
    expect(await users.stopAll('shop', 'run-shop-1')).toBe(true);
    await users.release('shop', 'run-shop-1');
    await expect(readFile(join(claimsDir, String(user!.uid)), 'utf8')).rejects.toThrow(/ENOENT/);
  });

  it('never gives one id to two deploy directories of the host claiming at once', async () => {
    const [dirA, dirB] = await Promise.all([deployDirOf('a'), deployDirOf('b')]);
    const [a, b] = await Promise.all([appUsers(dirA, [FIRST + 30, FIRST + 33], noKill), appUsers(dirB, [FIRST + 30, FIRST + 33], noKill)]);
    const versions = ['run-1', 'run-2'];
    for (const dir of [dirA, dirB]) for (const v of versions) await mkdir(join(dir, 'shop', v), { recursive: true });
    const given = await Promise.all([a, b].flatMap(({ users }) => versions.map((v) => users.claim('shop', v))));
    expect(new Set(given.map((u) => u!.uid)).size).toBe(4);
    // Each claim names the deploy directory holding it.
    expect(await claimOf(given[0]!.uid)).toEqual({ deployDir: dirA, version: 'shop/run-1' });
    expect(await claimOf(given[3]!.uid)).toEqual({ deployDir: dirB, version: 'shop/run-2' });
    // The range is the host's: four ids, four versions, none left for a fifth in either directory.
    await mkdir(join(dirB, 'shop', 'run-3'), { recursive: true });
    await expect(b.users.claim('shop', 'run-3')).rejects.toThrow(/no deploy user id is free/);
  });

  it("never kills a live version of another deploy directory: not when stopping or pruning its own dead version on the same id, nor at the launcher's stop", async () => {
    const [dirA, dirB] = await Promise.all([deployDirOf('a'), deployDirOf('b')]);
    const range: [number, number] = [FIRST + 40, FIRST + 49];
    // Stack A serves a version as the first id of the range.
    const a = await appUsers(dirA, range);
    await mkdir(join(dirA, 'shop', 'run-shop-1'), { recursive: true });
    const held = (await a.users.claim('shop', 'run-shop-1'))!;
    const live = await runAs(held.uid);
    // Stack B's old version, long dead, was given the same id by an older deployer (claims per DEPLOY_DIR).
    await mkdir(join(dirB, 'old', 'run-old-1'), { recursive: true });
    await mkdir(join(dirB, '.uids'), { mode: 0o700 });
    await writeFile(join(dirB, '.uids', String(held.uid)), 'old/run-old-1\n');
    const b = await appUsers(dirB, range);
    await mkdir(join(dirB, 'new', 'run-new-1'), { recursive: true });
    const mine = (await b.users.claim('new', 'run-new-1'))!;
    expect(mine.uid).not.toBe(held.uid);
    // What B's next deploy does (stopPrevious of a dead version, then prune), then the launcher's stop of B.
    expect(await b.users.stopAll('old', 'run-old-1')).toBe(true);
    await rm(join(dirB, 'old', 'run-old-1'), { recursive: true });
    await b.users.release('old', 'run-old-1');
    await stopAllDeployments(dirB, 1000, { claimsDir });
    expect(processesOfUser(held.uid)).toEqual([live]);
    expect(await claimOf(held.uid)).toEqual({ deployDir: dirA, version: 'shop/run-shop-1' });
    // B was told, at start-up, that it shared that id.
    expect(b.notices).toEqual([expect.stringContaining(`user id ${held.uid}`)]);
    // The directory holding the id does stop it.
    expect(await a.users.stopAll('shop', 'run-shop-1')).toBe(true);
    expect(processesOfUser(held.uid)).toEqual([]);
  });

  it("takes back another deploy directory's claim only once that version's directory is gone and the claim is old", async () => {
    const [dirA, dirB] = await Promise.all([deployDirOf('a'), deployDirOf('b')]);
    const range: [number, number] = [FIRST + 50, FIRST + 52];
    const killedByA: number[] = [];
    const killedByB: number[] = [];
    const a = await appUsers(dirA, range, async (u) => (killedByA.push(u.uid), { survivors: [] }));
    const b = await appUsers(dirB, range, async (u) => (killedByB.push(u.uid), { survivors: [] }));
    await mkdir(join(dirA, 'shop', 'run-shop-1'), { recursive: true });
    expect((await a.users.claim('shop', 'run-shop-1'))!.uid).toBe(FIRST + 50);
    const claimA = join(claimsDir, String(FIRST + 50));
    for (const v of ['run-1', 'run-2', 'run-3']) await mkdir(join(dirB, 'shop', v), { recursive: true });
    // Young, its version directory there: taken.
    expect((await b.users.claim('shop', 'run-1'))!.uid).toBe(FIRST + 51);
    // Old, but its version directory is there: taken.
    await utimes(claimA, HOUR_AGO(), HOUR_AGO());
    expect((await b.users.claim('shop', 'run-2'))!.uid).toBe(FIRST + 52);
    // Its directory gone, but the claim is young (a deploy of A may be under way): taken.
    await rm(join(dirA, 'shop', 'run-shop-1'), { recursive: true });
    await utimes(claimA, new Date(), new Date());
    await expect(b.users.claim('shop', 'run-3')).rejects.toThrow(/no deploy user id is free/);
    expect(killedByB).toEqual([]);
    // Both, but something runs as it (A's version, where B may not see A's directory): never killed, not taken.
    await utimes(claimA, HOUR_AGO(), HOUR_AGO());
    const live = await runAs(FIRST + 50);
    await expect(b.users.claim('shop', 'run-3')).rejects.toThrow(/no deploy user id is free/);
    process.kill(live, 'SIGKILL');
    await expect.poll(() => processesOfUser(FIRST + 50), { timeout: 5000, interval: 20 }).toEqual([]);
    // Idle, but claimed in another PID namespace (a deployer in a container, whose processes B cannot see): not taken.
    const asWritten = await readFile(claimA, 'utf8');
    await writeFile(claimA, JSON.stringify({ ...JSON.parse(asWritten), pidns: 'pid:[1]' }));
    await utimes(claimA, HOUR_AGO(), HOUR_AGO());
    await expect(b.users.claim('shop', 'run-3')).rejects.toThrow(/no deploy user id is free/);
    await writeFile(claimA, asWritten);
    await utimes(claimA, HOUR_AGO(), HOUR_AGO());
    // Idle, in this namespace: taken back, without B killing anything of A's.
    expect((await b.users.claim('shop', 'run-3'))!.uid).toBe(FIRST + 50);
    expect(killedByB).toEqual([]);
    expect(await claimOf(FIRST + 50)).toEqual({ deployDir: dirB, version: 'shop/run-3' });
    // A no longer holds it: what A stops of its old version leaves B's alone.
    expect(await a.users.stopAll('shop', 'run-shop-1')).toBe(true);
    expect(killedByA).toEqual([]);
  });

  it('refuses, and says so, to kill as an id that passed to another deploy directory while the stop waited for the register', async () => {
    const [dirA, dirB] = await Promise.all([deployDirOf('a'), deployDirOf('b')]);
    const killed: number[] = [];
    const warnings: { data: Record<string, unknown>; message: string }[] = [];
    const a = await resolveAppUsers({
      deployDir: dirA,
      claimsDir,
      uids: [FIRST + 70, FIRST + 79],
      maxProcesses: 64,
      kill: async (u) => (killed.push(u.uid), { survivors: [] }),
      warn: (data, message) => warnings.push({ data, message }),
    });
    await mkdir(join(dirA, 'shop', 'run-shop-1'), { recursive: true });
    const uid = (await a.users.claim('shop', 'run-shop-1'))!.uid;
    // Another deployer holds the register while A's stop, having found its claim, waits for it; meanwhile
    // the id becomes B's (as a sibling deployer's release and B's claim would make it).
    const lock = await holdFileLock(join(claimsDir, '.lock'));
    const stopping = a.users.stopAll('shop', 'run-shop-1');
    await new Promise((r) => setTimeout(r, 300));
    await writeFile(join(claimsDir, String(uid)), `${JSON.stringify({ deployDir: dirB, version: 'shop/run-1' })}\n`);
    await lock.release();
    expect(await stopping).toBe(false);
    expect(killed).toEqual([]);
    expect(warnings).toEqual([{ data: expect.objectContaining({ uid, version: 'shop/run-shop-1' }), message: expect.stringMatching(/not killing/) }]);
  });

  it('honours the claims an older deployer left in DEPLOY_DIR/.uids', async () => {
    const [dirA, dirB] = await Promise.all([deployDirOf('a'), deployDirOf('b')]);
    const range: [number, number] = [FIRST + 60, FIRST + 69];
    const killed: number[] = [];
    const kill: Kill = async (u) => (killed.push(u.uid), { survivors: [] });
    // Before the upgrade, A's deployer gave FIRST + 60 to a version that still runs.
    await mkdir(join(dirA, 'shop', 'run-shop-1'), { recursive: true });
    await mkdir(join(dirA, '.uids'), { mode: 0o700 });
    await writeFile(join(dirA, '.uids', String(FIRST + 60)), 'shop/run-shop-1\n');
    await utimes(join(dirA, '.uids', String(FIRST + 60)), HOUR_AGO(), HOUR_AGO());
    const a = await appUsers(dirA, range, kill);
    const b = await appUsers(dirB, range, kill);
    await mkdir(join(dirB, 'shop', 'run-1'), { recursive: true });
    expect((await b.users.claim('shop', 'run-1'))!.uid).toBe(FIRST + 61);
    // Moved into the host-wide directory, its time kept (the orphan rule counts from the claim).
    expect(await claimOf(FIRST + 60)).toEqual({ deployDir: dirA, version: 'shop/run-shop-1' });
    expect((await stat(join(claimsDir, String(FIRST + 60)))).mtimeMs).toBeLessThan(Date.now() - 3000_000);
    expect(await readdir(dirA)).not.toContain('.uids');
    expect(a.notices ?? []).toEqual([]);
    // Still that version's, in A.
    expect((await a.users.claim('shop', 'run-shop-1'))!.uid).toBe(FIRST + 60);
    expect(await a.users.stopAll('shop', 'run-shop-1')).toBe(true);
    expect(killed).toEqual([FIRST + 60]);
  });
});
