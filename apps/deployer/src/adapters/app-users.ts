import { execFile } from 'node:child_process';
import { chmod, chown, lchown, lstat, mkdir, open, readdir, readFile, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { holdFileLock } from '@conveyor/procfs';
import { checkBash, checkSetpriv, deleteFilesOf, hostKnowsUser, killUserProcesses, ownPrivateDir, untraversable, type BuildUser } from '@conveyor/runner';

const exec = promisify(execFile);

/** Above the build users' default range (2000000000-2000000999), below 2^31. */
export const DEFAULT_DEPLOY_UIDS: readonly [number, number] = [2_000_001_000, 2_000_009_999];

/** Under DEPLOY_DIR: one file per user id given to a version (not a pipeline name: those start with a letter or digit). */
export const CLAIMS_DIR = '.uids';

/** A claim not matched by its version's directory for this long was left by a deploy that died first. */
const ORPHAN_CLAIM_MS = 10 * 60_000;

/**
 * Who each deployed version runs as. A root deployer gives each version a user id of its own, claimed
 * when the version is unpacked and kept until its directory is pruned: what one version starts (a
 * daemon that left its process group included) can be found and stopped by its id, and a deployed app
 * cannot read the deployer's environment or memory, nor another version's files.
 */
export interface AppUsers {
  /** The version's user, claimed now if it has none yet; undefined: versions run as the deployer. */
  claim(pipeline: string, version: string): Promise<BuildUser | undefined>;
  /**
   * Kills everything running as the version's user (nothing if it has none). False when something
   * survived (stuck in uninterruptible sleep, say): root must then leave its files alone for now.
   */
  stopAll(pipeline: string, version: string): Promise<boolean>;
  /** Frees the version's user once its directory is gone (after stopAll); kept while anything of it runs. */
  release(pipeline: string, version: string): Promise<void>;
  /**
   * Gives the unpacked version to its user: `appDir`'s tree, a home of its own in `home`, and the
   * version's directory `dir`, which only root and the user may enter (other versions' users pass
   * through DEPLOY_DIR, but not into another version).
   */
  handOver(dir: string, appDir: string, home: string, user: BuildUser): Promise<void>;
  /** For the start-up log line. */
  readonly summary: string;
  /** The range of user ids deployed versions run as (the Redis fence refuses them); undefined when they run as the deployer's own user. */
  readonly range?: readonly [number, number];
}

export const ownUser: AppUsers = {
  claim: async () => undefined,
  stopAll: async () => true,
  release: async () => undefined,
  handOver: async () => undefined,
  summary: "deployed versions run as the deployer's own user",
};

export interface AppUserOptions {
  deployDir: string;
  /** DEPLOY_UIDS when given; explicit settings that cannot be used are errors, never fall-backs. */
  uids?: [number, number];
  maxProcesses: number;
  /** How a user's processes are killed (default: killUserProcesses). */
  kill?: (user: BuildUser) => Promise<{ survivors: number[] }>;
}

/**
 * The app users this deployer can give: its own user unless it runs as root with setpriv and bash, and
 * with a DEPLOY_DIR the range's ids can reach (otherwise a warning says why). Claims are files
 * `<DEPLOY_DIR>/.uids/<uid>` naming `<pipeline>/<version>`, made with O_EXCL: deployers sharing a
 * DEPLOY_DIR never give one id twice (deployers of one host with different DEPLOY_DIRs need ranges
 * of their own).
 */
export async function resolveAppUsers(opts: AppUserOptions): Promise<{ users: AppUsers; warning?: string }> {
  const fallBack = (why: string) => {
    if (opts.uids) throw new Error(`DEPLOY_UIDS cannot be used: ${why}`);
    return { users: ownUser, warning: `deployed versions run as the deployer's own user and can read its environment: ${why}` };
  };
  if (process.getuid?.() !== 0) return fallBack('the deployer does not run as root');
  try {
    checkSetpriv();
    checkBash();
  } catch (err) {
    return fallBack((err as Error).message);
  }
  const [first, last] = opts.uids ?? DEFAULT_DEPLOY_UIDS;
  const blocked = await untraversable(opts.deployDir, { uid: first, gid: first }, 'DEPLOY_DIR');
  if (blocked) return fallBack(blocked);
  // Versions pass through it to their own directory; nobody else need list it (which pipelines are
  // deployed, and their versions' names) or write in it.
  const dir = await stat(opts.deployDir);
  if (dir.uid === 0 && (dir.mode & 0o066) !== 0) await chmod(opts.deployDir, dir.mode & 0o7711);
  const claims = join(opts.deployDir, CLAIMS_DIR);
  await mkdir(claims, { mode: 0o700 }).catch((err: NodeJS.ErrnoException) => {
    if (err.code !== 'EEXIST') throw err;
  });
  if (!(await ownPrivateDir(claims))) throw new Error(`${claims} must be a directory of the deployer's user that nobody else may write to (it says which user ids are whose)`);
  return { users: new ClaimedAppUsers(claims, first, last, opts.maxProcesses, opts.kill ?? ((u) => killUserProcesses(u))) };
}

class ClaimedAppUsers implements AppUsers {
  readonly summary: string;
  readonly range: readonly [number, number];
  /** Claims change one at a time: in this process (a promise chain), and across deployers (the kernel's lock on `.uids/.lock`). */
  private queue: Promise<unknown> = Promise.resolve();
  constructor(
    private readonly dir: string,
    private readonly first: number,
    private readonly last: number,
    private readonly maxProcesses: number,
    private readonly kill: (user: BuildUser) => Promise<{ survivors: number[] }>,
  ) {
    this.range = [first, last];
    this.summary = `each deployed version runs as a user of its own (ids ${first}-${last}, at most ${maxProcesses} processes each)`;
  }

  private user(uid: number): BuildUser {
    return { uid, gid: uid, maxProcesses: this.maxProcesses };
  }

  /** Every claim: uid → `<pipeline>/<version>`. */
  private async claims(): Promise<Map<number, { owner: string; mtimeMs: number }>> {
    const found = new Map<number, { owner: string; mtimeMs: number }>();
    for (const name of await readdir(this.dir)) {
      if (!/^\d+$/.test(name)) continue;
      const path = join(this.dir, name);
      const [owner, info] = await Promise.all([readFile(path, 'utf8').catch(() => ''), stat(path).catch(() => undefined)]);
      if (info) found.set(Number(name), { owner: owner.trim(), mtimeMs: info.mtimeMs });
    }
    return found;
  }

  private async find(pipeline: string, version: string): Promise<number | undefined> {
    const owner = `${pipeline}/${version}`;
    for (const [uid, claim] of await this.claims()) if (claim.owner === owner) return uid;
    return undefined;
  }

  private exclusively<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.queue.then(async () => {
      const lock = await holdFileLock(join(this.dir, '.lock'));
      try {
        return await fn();
      } finally {
        await lock.release();
      }
    });
    this.queue = run.catch(() => undefined);
    return run;
  }

  /** Nothing runs as `uid` any more (false if something survived being killed). */
  private async cleared(uid: number): Promise<boolean> {
    return (await this.kill(this.user(uid))).survivors.length === 0;
  }

  claim(pipeline: string, version: string): Promise<BuildUser> {
    return this.exclusively(() => this.claimLocked(pipeline, version));
  }

  private async claimLocked(pipeline: string, version: string): Promise<BuildUser> {
    const held = await this.find(pipeline, version);
    if (held !== undefined) return this.user(held);
    const claims = await this.claims();
    for (let uid = this.first; uid <= this.last; uid++) {
      const claim = claims.get(uid);
      if (claim && !(await this.orphaned(claim))) continue;
      if (hostKnowsUser(uid)) continue;
      if (claim) {
        // A deploy died between claiming and unpacking: once nothing of it runs, the id is free, and
        // what it left in the shared temporary directories goes with it.
        if (!(await this.cleared(uid))) continue;
        await deleteFilesOf(uid);
        await rm(join(this.dir, String(uid)), { force: true });
      }
      const fh = await open(join(this.dir, String(uid)), 'wx', 0o600).catch((err: NodeJS.ErrnoException) => {
        if (err.code === 'EEXIST') return undefined; // another deployer took it just now
        throw err;
      });
      if (!fh) continue;
      try {
        await fh.writeFile(`${pipeline}/${version}\n`);
      } finally {
        await fh.close();
      }
      return this.user(uid);
    }
    throw new Error(`no deploy user id is free in ${this.first}-${this.last} (one per kept version: widen DEPLOY_UIDS or lower DEPLOY_KEEP_VERSIONS)`);
  }

  /** A claim whose version directory is gone, old enough not to belong to a deploy under way (the directory is made before the claim). */
  private async orphaned(claim: { owner: string; mtimeMs: number }): Promise<boolean> {
    if (Date.now() - claim.mtimeMs < ORPHAN_CLAIM_MS) return false;
    const versionDir = join(this.dir, '..', claim.owner);
    return (await lstat(versionDir).catch(() => undefined)) === undefined;
  }

  async stopAll(pipeline: string, version: string): Promise<boolean> {
    const uid = await this.find(pipeline, version);
    return uid === undefined || (await this.cleared(uid));
  }

  async release(pipeline: string, version: string): Promise<void> {
    const owner = `${pipeline}/${version}`;
    // Still running: the id stays this version's (and so nobody else's) until a later sweep clears it.
    const uid = await this.find(pipeline, version);
    if (uid === undefined || !(await this.cleared(uid))) return;
    // Its files go while the claim still holds the id (the search of /tmp is slow: not under the lock).
    await deleteFilesOf(uid);
    await this.exclusively(async () => {
      const claim = await readFile(join(this.dir, String(uid)), 'utf8').catch(() => '');
      if (claim.trim() === owner) await rm(join(this.dir, String(uid)), { force: true });
    });
  }

  async handOver(dir: string, appDir: string, home: string, user: BuildUser): Promise<void> {
    // Nothing runs as the user yet (a fresh claim, or one whose processes were stopped): no race with it.
    // GNU chown, links not followed (an unpacked artifact's links are its own).
    await exec('chown', ['-R', '--no-dereference', `${user.uid}:${user.gid}`, '--', appDir]);
    await mkdir(home, { mode: 0o700 });
    await lchown(home, user.uid, user.gid);
    await chown(dir, 0, user.gid);
    await chmod(dir, 0o710);
  }
}
