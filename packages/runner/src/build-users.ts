import { spawn } from 'node:child_process';
import { mkdir, stat } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { z } from 'zod';
import { checkLockTool, processesOfUser, tryHoldFileLock, type FileLock } from '@conveyor/procfs';
import type { BuildUser } from './shell-process.js';

/** The variables naming who builds run as, shared by the services that run buildspecs (see resolveBuildUsers). */
export const BuildUserEnv = {
  /** One Linux user (and group) every build runs as, e.g. a named user with the tools' configuration. */
  BUILD_UID: z.coerce.number().int().min(0).optional(),
  BUILD_GID: z.coerce.number().int().min(0).optional(),
  /**
   * `first-last`: the user ids a root service gives its builds, one per concurrent build (group id =
   * user id). Each is locked host-wide while the service lives, so services sharing a host take
   * different ones. The ids need no /etc/passwd entry (`whoami` then has no name to print).
   */
  BUILD_UIDS: z
    .string()
    .regex(/^\d+-\d+$/, 'must be first-last, e.g. 2000000000-2000000999')
    .transform((text) => text.split('-').map(Number) as [number, number])
    .refine(([first, last]) => first > 0 && first <= last && last < 2 ** 31, 'must be 1 ≤ first ≤ last < 2^31')
    .default([2_000_000_000, 2_000_000_999]),
  /** Where the host-wide locks on BUILD_UIDS live: one directory for every service of the host. */
  BUILD_UID_LOCK_DIR: z.string().default('/run/lock/conveyor'),
};

export interface BuildUserConfig {
  BUILD_UID?: number;
  BUILD_GID?: number;
  BUILD_UIDS: [number, number];
  BUILD_UID_LOCK_DIR: string;
}

/** Who each build runs as. */
export interface BuildUsers {
  /**
   * Runs `fn` with the user its build runs as (undefined: this service's own user), then makes sure
   * nothing the build started still runs as that user, if the user is the build's alone.
   */
  withUser<T>(fn: (user: BuildUser | undefined) => Promise<T>): Promise<T>;
  /** Frees what is held for the builds (the pool's locks). */
  close(): Promise<void>;
  /** For the start-up log line. */
  readonly summary: string;
}

/**
 * Who builds run as, from most to least isolated:
 * - a root service (the default): each concurrent build gets a user id of its own from BUILD_UIDS.
 *   Builds running at once cannot read each other's files, processes or environments (`/proc/<pid>/environ`
 *   is readable by the same user only), nor the service's; and when a build ends, every process left
 *   running as its user is killed, including those that detached and dropped CONVEYOR_BUILD_MARK.
 * - BUILD_UID: every build runs as that one user. It cannot read the service's environment, but builds
 *   running at once share the user.
 * - a service that is not root runs builds as itself (they can read its environment), with a warning.
 * A setting that cannot be honoured is an error, never a silent fall-back.
 */
export async function resolveBuildUsers(workDir: string, config: BuildUserConfig, concurrency: number): Promise<{ users: BuildUsers; warning?: string }> {
  const root = process.getuid?.() === 0;
  if (config.BUILD_UID !== undefined) {
    const user = { uid: config.BUILD_UID, gid: config.BUILD_GID ?? config.BUILD_UID };
    const why = !root ? 'switching users needs the service to run as root' : await untraversable(resolve(workDir), user);
    if (why) throw new Error(`BUILD_UID=${user.uid} cannot be used: ${why}`);
    return { users: sharedUser(user, `builds run as uid ${user.uid}, shared by concurrent builds`) };
  }
  if (!root) {
    return {
      users: sharedUser(undefined, "builds run as this service's own user"),
      warning: "builds run as this service's own user and can read its environment; run the service as root (each build then runs as a user of its own) or set BUILD_UID",
    };
  }
  const [first, last] = config.BUILD_UIDS;
  const blocked = await untraversable(resolve(workDir), { uid: first, gid: first });
  if (blocked) throw new Error(`the builds' users (BUILD_UIDS) cannot be used: ${blocked}`);
  return { users: await openBuildUserPool({ first, last, size: concurrency, lockDir: config.BUILD_UID_LOCK_DIR }) };
}

function sharedUser(user: BuildUser | undefined, summary: string): BuildUsers {
  return { withUser: (fn) => fn(user), close: async () => undefined, summary };
}

/** Why `user` cannot reach `dir` (the first ancestor, created if missing, it may not enter), if it cannot. */
async function untraversable(dir: string, user: BuildUser): Promise<string | undefined> {
  await mkdir(dir, { recursive: true });
  for (let d = dir; ; d = dirname(d)) {
    const info = await stat(d);
    const bit = info.uid === user.uid ? 0o100 : info.gid === user.gid ? 0o010 : 0o001;
    if ((info.mode & bit) === 0) return `user ${user.uid} cannot reach ${d}; put WORK_DIR where it can`;
    if (dirname(d) === d) return undefined;
  }
}

export interface BuildUserPoolOptions {
  first: number;
  last: number;
  /** How many user ids to hold: one per concurrent build. */
  size: number;
  lockDir: string;
}

/**
 * Takes `size` user ids of `first..last` that no other process on the host holds (the kernel's lock on
 * `<lockDir>/uid-<id>.lock`, kept while this process lives), kills what a dead holder's builds left
 * running as them, and lends one to each build at a time.
 */
export async function openBuildUserPool(opts: BuildUserPoolOptions): Promise<BuildUsers> {
  checkLockTool('the build user pool');
  await mkdir(opts.lockDir, { recursive: true });
  const locks = new Map<number, FileLock>();
  const lockPath = (uid: number) => join(opts.lockDir, `uid-${uid}.lock`);
  try {
    for (let uid = opts.first; uid <= opts.last && locks.size < opts.size; uid++) {
      const lock = await tryHoldFileLock(lockPath(uid));
      if (lock) locks.set(uid, lock);
    }
    if (locks.size < opts.size) {
      throw new Error(
        `BUILD_UIDS ${opts.first}-${opts.last}: ${locks.size} of the ${opts.size} user ids this service needs (one per concurrent build) are free; ` +
          `other services of this host hold the others (locks in ${opts.lockDir}). Give it a wider range, or lower WORKER_CONCURRENCY`,
      );
    }
    // A service that held these and died may have left builds running.
    for (const uid of locks.keys()) await killUserProcesses({ uid, gid: uid });
  } catch (err) {
    await Promise.all([...locks.values()].map((l) => l.release()));
    throw err;
  }
  const free: number[] = [...locks.keys()];
  const waiting: ((uid: number) => void)[] = [];
  const take = () => (free.length ? Promise.resolve(free.shift()!) : new Promise<number>((r) => waiting.push(r)));
  const give = (uid: number) => {
    const next = waiting.shift();
    if (next) next(uid);
    else free.push(uid);
  };
  const uids = [...locks.keys()];
  return {
    summary: `each build runs as a user of its own: uids ${uids[0]}…${uids[uids.length - 1]} (${uids.length}, locked in ${opts.lockDir})`,
    async withUser(fn) {
      const uid = await take();
      const user = { uid, gid: uid };
      try {
        // The lock's holder process died (killed by hand): take the lock again, or lend no user that
        // another service may be lending too.
        if (locks.get(uid)!.lost()) {
          const again = await tryHoldFileLock(lockPath(uid));
          if (!again) throw new Error(`the lock on build user ${uid} was lost and another process holds it now`);
          locks.set(uid, again);
        }
        return await fn(user);
      } finally {
        try {
          await killUserProcesses(user);
        } finally {
          give(uid);
        }
      }
    },
    async close() {
      await Promise.all([...locks.values()].map((l) => l.release()));
    },
  };
}

/**
 * Kills every process running as `user`: kill(-1, SIGKILL) sent as that user reaches exactly the
 * processes it may signal (its own), in one pass of the kernel that a fork cannot slip through; then
 * /proc is read to confirm, and again after a pause for processes in uninterruptible sleep. Returns
 * how many were running. Never used for a user a build does not have to itself.
 */
export async function killUserProcesses(user: BuildUser, waitMs = 5000): Promise<number> {
  const found = processesOfUser(user.uid).length;
  const deadline = Date.now() + waitMs;
  while (processesOfUser(user.uid).length > 0) {
    if (Date.now() > deadline) throw new Error(`processes of uid ${user.uid} outlived SIGKILL: ${processesOfUser(user.uid).join(', ')}`);
    await new Promise<void>((done) => {
      // stdin ignored: bash with a socket there would read ~/.bashrc. No environment: it needs none.
      const killer = spawn('/bin/bash', ['-c', 'kill -KILL -1 2>/dev/null; exit 0'], { uid: user.uid, gid: user.gid, cwd: '/', env: {}, stdio: 'ignore' });
      killer.on('exit', () => done());
      killer.on('error', () => done());
    });
    if (processesOfUser(user.uid).length > 0) await new Promise((r) => setTimeout(r, 20));
  }
  return found;
}
