import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { chmod, mkdir, stat } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { z } from 'zod';
import { checkLockTool, processesOfUser, tryHoldFileLock, type FileLock } from '@conveyor/procfs';
import { BUILD_USER_NAME, namespaceSupport, privateTemporaries, usersCanMakeUserNamespaces } from './build-namespace.js';
import { ownPrivateDir, replaceableBy } from './safe-files.js';
import { hostKnowsUser, ownProcessLimits, readFileOr } from './host.js';
import { checkBash, checkSetpriv, type BuildUser } from './shell-process.js';

/** Room for parallel compilers, test runners and browsers with their threads; a fork bomb still stops. */
export const DEFAULT_BUILD_MAX_PROCESSES = 2048;

/** A `first-last` range of Linux user ids (1 ≤ first ≤ last < 2^31), as BUILD_UIDS and DEPLOY_UIDS take it. */
export function uidRange(example: string) {
  return z
    .string()
    .regex(/^\d+-\d+$/, `must be first-last, e.g. ${example}`)
    .transform((text) => text.split('-').map(Number) as [number, number])
    .refine(([first, last]) => first > 0 && first <= last && last < 2 ** 31, 'must be 1 ≤ first ≤ last < 2^31');
}

/** The variables naming who builds run as, shared by the services that run buildspecs (see resolveBuildUsers). */
export const BuildUserEnv = {
  /** One Linux user (and group) every build runs as, e.g. a named user with the tools' configuration. */
  BUILD_UID: z.coerce.number().int().min(0).optional(),
  BUILD_GID: z.coerce.number().int().min(0).optional(),
  /**
   * `first-last`: the user ids a root service gives its builds, one per concurrent build (group id =
   * user id). Each is locked host-wide while the service lives, so services sharing a host take
   * different ones. The ids need no /etc/passwd entry (`whoami` then has no name to print).
   * Default DEFAULT_BUILD_UIDS.
   */
  BUILD_UIDS: uidRange('2000000000-2000000999').optional(),
  /** Where the host-wide locks on BUILD_UIDS live: one directory for every service of the host. */
  BUILD_UID_LOCK_DIR: z.string().default('/run/lock/conveyor'),
  /**
   * Most processes and threads one build may have at once (RLIMIT_NPROC of its user: with BUILD_UID,
   * shared by the builds running at once). A fork bomb stops there. Builds run as the service get none.
   */
  BUILD_MAX_PROCESSES: z.coerce.number().int().min(16).default(DEFAULT_BUILD_MAX_PROCESSES),
};

/** Above systemd's ranges for dynamic and container users, below 2^31. */
export const DEFAULT_BUILD_UIDS: readonly [number, number] = [2_000_000_000, 2_000_000_999];

export interface BuildUserConfig {
  BUILD_UID?: number;
  BUILD_GID?: number;
  BUILD_UIDS?: [number, number] | undefined;
  BUILD_UID_LOCK_DIR: string;
  /** Default DEFAULT_BUILD_MAX_PROCESSES. */
  BUILD_MAX_PROCESSES?: number;
}

/** Who each build runs as. */
export interface BuildUsers {
  /**
   * Runs `fn` with the user its build runs as (undefined: this service's own user), then makes sure
   * nothing the build started still runs as that user, if the user is the build's alone. `stopAll`
   * kills everything running as the user now (a no-op for a shared user): the build calls it once its
   * shell has ended, before root touches its files.
   */
  withUser<T>(fn: (user: BuildUser | undefined, stopAll: () => Promise<void>) => Promise<T>): Promise<T>;
  /** Frees what is held for the builds (the pool's locks). */
  close(): Promise<void>;
  /** For the start-up log line. */
  readonly summary: string;
  /**
   * The range of user ids builds of this host run as, this service's and others' (the Redis fence
   * refuses them all); undefined when builds run as the service's own user.
   */
  readonly range?: readonly [number, number];
  /** The ids this service holds now (lent, free or set aside): a process of one of them is one of its builds'. */
  ownIds(): number[];
}

/**
 * Who builds run as, from most to least isolated:
 * - a root service (the default): each concurrent build gets a user id of its own from BUILD_UIDS.
 *   Builds running at once cannot read each other's files, processes or environments (`/proc/<pid>/environ`
 *   is readable by the same user only), nor the service's; and when a build ends, every process left
 *   running as its user is killed, including those that detached and dropped CONVEYOR_BUILD_MARK.
 * - BUILD_UID: every build runs as that one user. It cannot read the service's environment, but builds
 *   running at once share the user.
 * - a service that is not root runs builds as itself (they can read its environment), with a warning;
 *   so does a root service whose WORK_DIR the default range's ids cannot reach.
 * A setting given explicitly that cannot be honoured is an error, never a fall-back.
 */
export async function resolveBuildUsers(
  workDir: string,
  config: BuildUserConfig,
  concurrency: number,
  warn?: (message: string) => void,
): Promise<{ users: BuildUsers; warning?: string }> {
  const root = process.getuid?.() === 0;
  if (root) checkProcessLimit(config.BUILD_MAX_PROCESSES ?? DEFAULT_BUILD_MAX_PROCESSES, concurrency, config.BUILD_UID !== undefined, warn);
  if (config.BUILD_UID !== undefined) {
    const user = { uid: config.BUILD_UID, gid: config.BUILD_GID ?? config.BUILD_UID, maxProcesses: config.BUILD_MAX_PROCESSES ?? DEFAULT_BUILD_MAX_PROCESSES };
    if (root) checkBash();
    const why = !root ? 'switching users needs the service to run as root' : ((await untraversable(resolve(workDir), user)) ?? (await writableBy(resolve(workDir), user)));
    if (why) throw new Error(`BUILD_UID=${user.uid} cannot be used: ${why}`);
    if (root) warnOfUserNamespaces(user.uid, warn);
    return withNamespaces(sharedUser(user, `builds run as uid ${user.uid}, shared by concurrent builds (at most ${user.maxProcesses} processes together)`), workDir, { hostNamesIt: hostKnowsUser(user.uid) });
  }
  if (!root) {
    return {
      users: sharedUser(undefined, "builds run as this service's own user"),
      warning: "builds run as this service's own user and can read its environment; run the service as root (each build then runs as a user of its own) or set BUILD_UID",
    };
  }
  const [first, last] = config.BUILD_UIDS ?? DEFAULT_BUILD_UIDS;
  const blocked = await untraversable(resolve(workDir), { uid: first, gid: first });
  if (blocked && config.BUILD_UIDS) throw new Error(`BUILD_UIDS cannot be used: ${blocked}`);
  if (blocked) {
    return {
      users: sharedUser(undefined, "builds run as this service's own user"),
      warning: `builds run as this service's own user and can read its environment: the builds' own users cannot be used, ${blocked}`,
    };
  }
  // Builds may enter the work directory (to reach their own), not list it: the other builds' names are theirs.
  await chmod(resolve(workDir), 0o711);
  // Nor may they rename it or a parent. Checked as any one of the ids: to all, these are someone else's.
  const exposed = await writableBy(resolve(workDir), { uid: first, gid: first });
  if (exposed) throw new Error(`the builds' users cannot be given their directories: ${exposed}`);
  const pool = await openBuildUserPool({ first, last, size: concurrency, lockDir: config.BUILD_UID_LOCK_DIR, maxProcesses: config.BUILD_MAX_PROCESSES ?? DEFAULT_BUILD_MAX_PROCESSES, ...(warn ? { warn } : {}) });
  warnOfUserNamespaces(first, warn);
  return withNamespaces(pool, workDir, undefined);
}

/**
 * Says (through `warn`) when the process limit cannot hold as set: the service's own limit is lower
 * (the builds inherit it; the uid killer, whose switch to a user at the limit then fails, leaves the work
 * to root's sweep), or the builds at their limits could take most of the host's process ids.
 */
function checkProcessLimit(limit: number, concurrency: number, shared: boolean, warn: ((message: string) => void) | undefined): void {
  if (!warn) return;
  const own = ownProcessLimits();
  const lower = Math.min(own.soft ?? Infinity, own.hard ?? Infinity);
  if (lower < limit) warn(`BUILD_MAX_PROCESSES is ${limit}, but this service's own process limit is ${lower}: builds get ${lower}`);
  // A shared user's limit is shared by its builds; the pool's ids each have their own.
  const total = shared ? limit : limit * concurrency;
  const pidMax = Number(readFileOr('/proc/sys/kernel/pid_max').trim());
  if (pidMax > 0 && total > pidMax / 2) {
    warn(`BUILD_MAX_PROCESSES ${limit}${shared ? '' : ` × ${concurrency} concurrent builds`} could take ${total} of this host's ${pidMax} process ids: lower it, or raise kernel.pid_max`);
  }
}

/** Says (through `warn`) when builds could make namespaces of their own, where the limits of theirs do not hold. */
function warnOfUserNamespaces(uid: number, warn: ((message: string) => void) | undefined): void {
  if (!warn || !namespaceSupport().ok || !usersCanMakeUserNamespaces(uid)) return;
  warn(
    'builds can make user namespaces of their own on this host (unprivileged user namespaces are on): in one, a build may mount a tmpfs and make an IPC namespace ' +
      "with the kernel's default limits, so its memory there is not bounded. On build hosts, turn them off (user.max_user_namespaces=0; on Debian also kernel.unprivileged_userns_clone=0)",
  );
}

/** The builds' users, and what their shells' namespaces give them (build-namespace.ts): said at start-up. */
function withNamespaces(users: BuildUsers, workDir: string, shared: { hostNamesIt: boolean } | undefined): { users: BuildUsers; warning?: string } {
  const support = namespaceSupport();
  const hostNamesThem = shared?.hostNamesIt ?? false;
  if (!support.ok) {
    const nameless = hostNamesThem ? '' : ', and without a name: whoami, ssh (so git over ssh) and os.userInfo() fail in builds';
    return { users, warning: `${users.summary}, but in this host's namespaces (${support.why}): builds see each other's processes, /tmp and SysV IPC${nameless}` };
  }
  const own = privateTemporaries([resolve(workDir)]);
  const parts = [
    shared ? "/proc (showing its user's processes: the other builds' too, as they share the user)" : '/proc (showing its own processes only)',
    own.tmp ? '/tmp and /var/tmp (its TMPDIR)' : undefined,
    own.shm ? '/dev/shm' : undefined,
    'SysV IPC',
  ].filter(Boolean);
  const kept = own.tmp ? '' : ` (/tmp stays the host's: WORK_DIR is under it)`;
  const name = hostNamesThem ? '' : `; its user is named ${BUILD_USER_NAME} there`;
  return { users: Object.assign(users, { summary: `${users.summary}; each build shell has its own ${parts.join(', ')}${kept}${name}` }) };
}

/** Why `user` may not have WORK_DIR: it could rename or replace it, or entries root creates there. */
async function writableBy(dir: string, user: BuildUser): Promise<string | undefined> {
  const d = await replaceableBy(dir, user);
  return d && `user ${user.uid} may write ${d}, where the service keeps the builds' directories; put WORK_DIR where it cannot`;
}

function sharedUser(user: BuildUser | undefined, summary: string): BuildUsers {
  const range = user && user.uid !== 0 && user.uid !== process.getuid?.() ? ([user.uid, user.uid] as const) : undefined;
  return { withUser: (fn) => fn(user, async () => undefined), close: async () => undefined, summary, ...(range ? { range } : {}), ownIds: () => (range ? [range[0]] : []) };
}

/**
 * Why `user` cannot reach `dir` (the first ancestor, created if missing, it may not enter), if it
 * cannot; `setting` names the variable that places `dir`.
 */
export async function untraversable(dir: string, user: BuildUser, setting = 'WORK_DIR'): Promise<string | undefined> {
  await mkdir(dir, { recursive: true });
  for (let d = dir; ; d = dirname(d)) {
    const info = await stat(d);
    const bit = info.uid === user.uid ? 0o100 : info.gid === user.gid ? 0o010 : 0o001;
    if ((info.mode & bit) === 0) return `user ${user.uid} cannot reach ${d}; put ${setting} where it can`;
    if (dirname(d) === d) return undefined;
  }
}

export interface BuildUserPoolOptions {
  first: number;
  last: number;
  /** How many user ids to hold: one per concurrent build. */
  size: number;
  lockDir: string;
  /** Each build's process limit (BuildUser.maxProcesses); default none. */
  maxProcesses?: number;
  /** Where problems go (a uid set aside, a lock lost); the service passes its logger. */
  warn?: (message: string) => void;
  /** How an id's processes are killed (tests stand in processes that will not die). Default killUserProcesses. */
  kill?: (user: BuildUser) => Promise<{ found: number; survivors: number[] }>;
  /** How often an id set aside with processes still running is swept again. Default 10 s. */
  sweepAgainMs?: number;
}

/** Directories anyone may write to, where a build's user can leave files that outlive its build. */
const SHARED_WRITABLE = ['/tmp', '/var/tmp', '/dev/shm'];

/**
 * Takes `size` user ids of `first..last` that no other process on the host holds (the kernel's lock on
 * `<lockDir>/uid-<id>.lock`, kept while this process lives) and that the system does not know as a user,
 * clears what a dead holder's builds left behind as them, and lends one to each build at a time. After
 * each build everything running as its id is killed and the files it owns in /tmp, /var/tmp and
 * /dev/shm are deleted; an id whose processes survive that (swept again until clear), or whose lock was
 * lost, is set aside and another taken from the range.
 */
export async function openBuildUserPool(opts: BuildUserPoolOptions): Promise<BuildUsers> {
  checkLockTool('the build user pool');
  checkSetpriv();
  checkBash();
  await trustedLockDir(opts.lockDir);
  const warn = opts.warn ?? (() => undefined);
  const locks = new Map<number, FileLock>();
  /** Ids of the range this pool will not try again: held elsewhere, known users, set aside. */
  const passed = new Set<number>();
  const lockPath = (uid: number) => join(opts.lockDir, `uid-${uid}.lock`);
  const kill = opts.kill ?? ((user: BuildUser) => killUserProcesses(user));
  let closed = false;
  /**
   * An id set aside with processes still running (a fork bomb that outran the sweep, a process stuck in
   * uninterruptible sleep) keeps its lock, so no other service lends it, and is swept again every
   * `sweepAgainMs` until nothing of it runs; then its lock is released.
   */
  const sweeping = new Map<number, { timer: NodeJS.Timeout; lock: FileLock }>();
  /** Ids set aside and not yet cleared (waiting for their next sweep, or in it): still this service's. */
  const uncleared = new Set<number>();
  /** Sweeps under way: close() waits for them. */
  const resweeps = new Set<Promise<void>>();
  const sweepUntilClear = (uid: number, lock: FileLock) => {
    uncleared.add(uid);
    const timer = setTimeout(() => {
      sweeping.delete(uid);
      const resweep = (async () => {
        const { survivors } = await kill({ uid, gid: uid });
        if (survivors.length && !closed) return sweepUntilClear(uid, lock);
        if (!survivors.length) {
          await deleteFilesOf(uid);
          uncleared.delete(uid);
        }
        await lock.release();
      })()
        .catch(() => lock.release())
        .finally(() => resweeps.delete(resweep));
      resweeps.add(resweep);
    }, opts.sweepAgainMs ?? 10_000);
    timer.unref();
    sweeping.set(uid, { timer, lock });
  };
  /** Takes the next usable id of the range, cleared of what a previous holder left; undefined if none is left. */
  const takeAnother = async (): Promise<number | undefined> => {
    for (let uid = opts.first; uid <= opts.last; uid++) {
      if (locks.has(uid) || passed.has(uid)) continue;
      passed.add(uid);
      if (hostKnowsUser(uid)) {
        warn(`build user id ${uid} belongs to a user of this system: skipped`);
        continue;
      }
      const lock = await tryHoldFileLock(lockPath(uid));
      if (!lock) continue;
      if (!(await clear(uid))) {
        sweepUntilClear(uid, lock);
        continue;
      }
      locks.set(uid, lock);
      return uid;
    }
    return undefined;
  };
  /** Kills every process of `uid` and deletes its files in shared directories; false (said) if some survive. */
  const clear = async (uid: number): Promise<boolean> => {
    const { survivors } = await kill({ uid, gid: uid });
    if (survivors.length) {
      warn(`build user id ${uid} set aside: processes ${survivors.join(', ')} survive SIGKILL`);
      return false;
    }
    await deleteFilesOf(uid);
    return true;
  };
  try {
    while (locks.size < opts.size) {
      if ((await takeAnother()) === undefined) {
        throw new Error(
          `BUILD_UIDS ${opts.first}-${opts.last}: ${locks.size} of the ${opts.size} user ids this service needs (one per concurrent build) are free; ` +
            `other services of this host hold others (locks in ${opts.lockDir}), or they are users of this system. Give it a wider range, or lower WORKER_CONCURRENCY`,
        );
      }
    }
  } catch (err) {
    await Promise.all([...locks.values()].map((l) => l.release()));
    throw err;
  }

  const free: number[] = [...locks.keys()];
  const waiting: { resolve: (uid: number) => void; reject: (err: Error) => void }[] = [];
  let lent = 0;
  /** Builds and the clearing of their ids, which close() waits for. */
  const inFlight = new Set<Promise<unknown>>();
  const track = <T>(p: Promise<T>): Promise<T> => {
    inFlight.add(p);
    void p.then(
      () => inFlight.delete(p),
      () => inFlight.delete(p),
    );
    return p;
  };
  const take = (): Promise<number> => {
    if (free.length) return Promise.resolve(free.shift()!);
    if (lent === 0) return Promise.reject(new Error(`no build user id is left in BUILD_UIDS ${opts.first}-${opts.last}: every one was set aside`));
    return new Promise((resolve, reject) => waiting.push({ resolve, reject }));
  };
  const give = (uid: number) => {
    const next = waiting.shift();
    if (next) next.resolve(uid);
    else free.push(uid);
  };
  /** An id that cannot be lent now: swept until clear if its lock is still ours, and another taken in its place. */
  const setAside = async (uid: number) => {
    const lock = locks.get(uid);
    locks.delete(uid);
    if (lock && !lock.lost()) sweepUntilClear(uid, lock);
    const replacement = await takeAnother().catch(() => undefined);
    if (replacement !== undefined) give(replacement);
  };
  /** Whether the lock on `uid` is (again) ours. A lost one is taken again if nobody else took it. */
  const stillOurs = async (uid: number): Promise<boolean> => {
    if (!locks.get(uid)!.lost()) return true;
    const again = await tryHoldFileLock(lockPath(uid));
    if (!again) return false;
    locks.set(uid, again);
    return true;
  };
  const lend = async <T>(fn: (user: BuildUser | undefined, stopAll: () => Promise<void>) => Promise<T>): Promise<T> => {
    let uid = await take();
    // A lock lost while the id was free (its holder process killed): another service may lend it now.
    while (!(await stillOurs(uid))) {
      warn(`the lock on build user id ${uid} was lost and another process holds it: that id is set aside`);
      locks.delete(uid);
      const replacement = await takeAnother();
      if (replacement === undefined) throw new Error(`no build user id is left in BUILD_UIDS ${opts.first}-${opts.last}`);
      uid = replacement;
    }
    lent++;
    const user: BuildUser = { uid, gid: uid, ...(opts.maxProcesses ? { maxProcesses: opts.maxProcesses } : {}) };
    const stopAll = async () => {
      const { survivors } = await kill(user);
      if (survivors.length) warn(`processes ${survivors.join(', ')} of build user id ${uid} survive SIGKILL`);
    };
    // The id counts as lent until it is cleared, or set aside (and replaced, if the range allows).
    const giveBack = async () => {
      let cleared = false;
      try {
        // Killing as an id whose lock went to someone else would kill their builds: never.
        const ours = await stillOurs(uid).catch(() => false);
        if (!ours) {
          warn(`the lock on build user id ${uid} was lost during a build and another process holds it: that id is set aside, and what the build left running is not killed`);
          locks.delete(uid);
        }
        cleared = ours && (await clear(uid).catch(() => false));
        if (!cleared) await setAside(uid).catch((err: unknown) => warn(`no build user id replaces ${uid}: ${(err as Error).message}`));
      } finally {
        lent--;
        if (cleared) give(uid);
        else if (lent === 0 && free.length === 0) for (const w of waiting.splice(0)) w.reject(new Error(`no build user id is left in BUILD_UIDS ${opts.first}-${opts.last}`));
      }
    };
    try {
      return await fn(user, stopAll);
    } finally {
      // The build's outcome goes out now; the id is cleared meanwhile, and lent again only after that.
      track(giveBack().catch((err: unknown) => warn(`build user id ${uid} could not be given back: ${(err as Error).message}`)));
    }
  };
  const locked = [...locks.keys()];
  return {
    // The whole range: the ids this service did not lock are other services' builds.
    range: [opts.first, opts.last],
    summary: `each build runs as a user of its own: uids ${locked.length <= 16 ? locked.join(', ') : `${locked.slice(0, 16).join(', ')}…`} (${locked.length}, locked in ${opts.lockDir})${opts.maxProcesses ? `, at most ${opts.maxProcesses} processes each` : ''}`,
    ownIds: () => [...new Set([...locks.keys(), ...uncleared])],
    withUser(fn) {
      if (closed) return Promise.reject(new Error('the build user pool is closed'));
      return track(lend(fn));
    },
    async close() {
      closed = true;
      // Only once no build runs and every id is cleared: released earlier, an id could be lent by another
      // service while one of our builds still runs as it.
      while (inFlight.size) await Promise.allSettled([...inFlight]);
      await Promise.allSettled([...resweeps]);
      for (const { timer, lock } of sweeping.values()) {
        clearTimeout(timer);
        await lock.release();
      }
      sweeping.clear();
      for (const uid of locks.keys()) if (await stillOurs(uid)) await clear(uid);
      await Promise.all([...locks.values()].map((l) => l.release()));
      locks.clear();
    },
  };
}

/**
 * The lock directory decides which ids are whose: only root may write to it. Made 0700 if missing; an
 * existing one that is a symlink, not root's, or writable by others is refused (in a 1777 /run/lock,
 * anyone could have made it first).
 */
async function trustedLockDir(dir: string): Promise<void> {
  await mkdir(dirname(dir), { recursive: true });
  await mkdir(dir, { mode: 0o700 }).catch((err: NodeJS.ErrnoException) => {
    if (err.code !== 'EEXIST') throw err;
  });
  if (!(await ownPrivateDir(dir))) {
    throw new Error(`BUILD_UID_LOCK_DIR ${dir} must be a directory of this service's user that nobody else may write to (it decides which build user ids are whose)`);
  }
}

/** Deletes what `uid` owns in the directories anyone may write to: files a build left there (a setuid copy of a shell, say) must not outlive it. */
export async function deleteFilesOf(uid: number): Promise<void> {
  const dirs = SHARED_WRITABLE.filter((d) => existsSync(d));
  if (dirs.length === 0) return;
  // find does not follow symlinks (-P) and stays on each directory's file system (-xdev).
  await new Promise<void>((done) => {
    const find = spawn('find', ['-P', ...dirs, '-xdev', '-mindepth', '1', '-user', String(uid), '-delete'], { stdio: 'ignore' });
    find.on('exit', () => done());
    find.on('error', () => done());
  });
}

/**
 * Kills every process running as `user`. First kill(-1, SIGKILL) sent *as that user*: it reaches exactly
 * its processes, in one pass of the kernel that a fork cannot slip through. Its processes can still fight
 * back (stop or kill that killer first, or exhaust their process limit so it cannot start), so the killer
 * gets `killerMs`, and then root sweeps: SIGSTOP to each process /proc shows as the user's (a stopped
 * process cannot fork), then SIGKILL, until none is left or `waitMs` has passed. Returns how many ran,
 * and the pids still running at the end (in uninterruptible sleep, say). Never used for a user a build
 * does not have to itself.
 */
export async function killUserProcesses(user: BuildUser, waitMs = 5000, killerMs = 1000): Promise<{ found: number; survivors: number[] }> {
  const found = processesOfUser(user.uid).length;
  if (found === 0) return { found, survivors: [] };
  await new Promise<void>((done) => {
    // Started as root (setpriv switches to the user itself): a spawn made as the user would wait, in
    // Node's main thread, for an exec that the user's processes can stop from happening. No
    // environment: it needs none.
    const killer = spawn(checkSetpriv(), [`--reuid=${user.uid}`, `--regid=${user.gid}`, '--clear-groups', '--', '/bin/sh', '-c', 'kill -KILL -1 2>/dev/null; exit 0'], {
      cwd: '/',
      env: {},
      stdio: 'ignore',
    });
    const timer = setTimeout(() => killer.kill('SIGKILL'), killerMs);
    const end = () => (clearTimeout(timer), done());
    killer.on('exit', end);
    killer.on('error', end);
  });
  const deadline = Date.now() + waitMs;
  for (;;) {
    const left = processesOfUser(user.uid);
    if (left.length === 0 || Date.now() > deadline) return { found, survivors: left };
    for (const signal of ['SIGSTOP', 'SIGKILL'] as const) {
      for (const pid of left) {
        // Still the user's (a pid that ended may have been given to another process since the scan).
        if (processesOfUser(user.uid, [pid]).length === 1) {
          try {
            process.kill(pid, signal);
          } catch {
            // gone meanwhile
          }
        }
      }
    }
    await new Promise((r) => setTimeout(r, 20));
  }
}
