import { execFile } from 'node:child_process';
import { chmod, chown, lchown, mkdir, realpath, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { checkBash, checkSetpriv, deleteFilesOf, hostKnowsUser, killUserProcesses, untraversable, type BuildUser } from '@conveyor/runner';
import { processesOfUser } from '@conveyor/procfs';
import { adoptLegacyClaims, DEFAULT_UID_CLAIMS_DIR, exists, LEGACY_CLAIMS_DIR, openUidClaims, ownPidNamespace, type FoundClaim, type UidClaims } from './uid-claims.js';

const exec = promisify(execFile);

/** Above the build users' default range (2000000000-2000000999), below 2^31. */
export const DEFAULT_DEPLOY_UIDS: readonly [number, number] = [2_000_001_000, 2_000_009_999];

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
   * Kills everything running as the version's user (nothing if it has none): only while the host-wide
   * claim gives that id to this version of this deploy directory. False when something survived (stuck
   * in uninterruptible sleep, say), or the id is someone else's now: root must then leave its files alone.
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
  /** DEPLOY_UID_CLAIMS_DIR: the host's register of which id is whose (default DEFAULT_UID_CLAIMS_DIR). */
  claimsDir?: string;
  /** DEPLOY_UIDS when given; explicit settings that cannot be used are errors, never fall-backs. */
  uids?: [number, number];
  maxProcesses: number;
  /** How a user's processes are killed (default: killUserProcesses). */
  kill?: Kill;
  /** Told when a kill is refused: the id is not this deploy directory's (any more). */
  warn?: (data: Record<string, unknown>, message: string) => void;
}

type Kill = (user: BuildUser) => Promise<{ survivors: number[] }>;

/**
 * The app users this deployer can give: its own user unless it runs as root with setpriv and bash, and
 * with a DEPLOY_DIR the range's ids can reach (otherwise a warning says why). Claims are host-wide
 * (uid-claims.ts): each names its deploy directory and version, so deployers of one host never give one
 * id twice, and each kills only as the ids its own directory holds. `notices`: claims an older deployer
 * left in `<DEPLOY_DIR>/.uids` that could not be adopted.
 */
export async function resolveAppUsers(opts: AppUserOptions): Promise<{ users: AppUsers; warning?: string; notices?: string[] }> {
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
  // Named as every deployer of the host will find it, whatever path it was given by.
  const deployDir = await realpath(opts.deployDir);
  const claims = await openUidClaims(opts.claimsDir ?? DEFAULT_UID_CLAIMS_DIR);
  const notices = await adoptLegacyClaims(claims, deployDir);
  const users = new ClaimedAppUsers(claims, deployDir, [first, last], opts.maxProcesses, opts.kill ?? ((u) => killUserProcesses(u)), opts.warn);
  return { users, ...(notices.length ? { notices } : {}) };
}

/**
 * For stopAllDeployments, as root: kills whatever runs as the ids `deployDir` holds in the register at
 * `claimsDir` (an older deployer's claims adopted first), and as no other.
 */
export async function stopAllAppUsers(deployDir: string, claimsDir: string): Promise<void> {
  const dir = await realpath(deployDir).catch(() => undefined);
  if (!dir) return;
  // Nothing was ever claimed here: no register to make.
  if (!(await exists(claimsDir)) && !(await exists(join(dir, LEGACY_CLAIMS_DIR)))) return;
  const claims = await openUidClaims(claimsDir);
  await adoptLegacyClaims(claims, dir);
  await new ClaimedAppUsers(claims, dir, DEFAULT_DEPLOY_UIDS, 0, (u) => killUserProcesses(u)).stopEverything();
}


class ClaimedAppUsers implements AppUsers {
  readonly summary: string;
  readonly range: readonly [number, number];
  constructor(
    private readonly claims: UidClaims,
    private readonly deployDir: string,
    [first, last]: readonly [number, number],
    private readonly maxProcesses: number,
    private readonly kill: Kill,
    private readonly warn?: AppUserOptions['warn'],
  ) {
    this.range = [first, last];
    this.summary = `each deployed version runs as a user of its own (ids ${first}-${last}, claimed host-wide in ${claims.dir}, at most ${maxProcesses} processes each)`;
  }

  private user(uid: number): BuildUser {
    return { uid, gid: uid, maxProcesses: this.maxProcesses };
  }

  /** A claim of this deploy directory (for `version`, when given). */
  private ours(found: FoundClaim | undefined, version?: string): boolean {
    return found?.claim?.deployDir === this.deployDir && (version === undefined || found.claim.version === version);
  }

  private async find(pipeline: string, version: string): Promise<number | undefined> {
    const owner = `${pipeline}/${version}`;
    return (await this.claims.all()).find((c) => this.ours(c, owner))?.uid;
  }

  /** Nothing runs as `uid` any more (false if something survived being killed). Under the lock only. */
  private async cleared(uid: number): Promise<boolean> {
    return (await this.kill(this.user(uid))).survivors.length === 0;
  }

  /**
   * Kills as `uid` only if the register still gives it to `owner` here: checked and killed under the
   * lock, so the id cannot pass to another directory in between. `released`: by a deployer sharing
   * this directory, once cleared (the id may be another's by now); `kept`: something survived, or the
   * id is someone else's now (nothing is known of what runs as it: leave its files).
   */
  private clearHeld(uid: number, owner: string): Promise<'cleared' | 'released' | 'kept'> {
    return this.claims.exclusively(async () => {
      const found = await this.claims.read(uid);
      if (!found) return 'released';
      if (!this.ours(found, owner)) {
        this.warn?.({ uid, version: owner, deployDir: this.deployDir, claim: found.claim }, 'not killing the processes of a user id this deploy directory does not hold');
        return 'kept';
      }
      return (await this.cleared(uid)) ? 'cleared' : 'kept';
    });
  }

  claim(pipeline: string, version: string): Promise<BuildUser> {
    return this.claims.exclusively(() => this.claimLocked(`${pipeline}/${version}`));
  }

  private async claimLocked(owner: string): Promise<BuildUser> {
    const all = await this.claims.all();
    const held = all.find((c) => this.ours(c, owner));
    if (held) return this.user(held.uid);
    const byUid = new Map(all.map((c) => [c.uid, c]));
    const [first, last] = this.range;
    for (let uid = first; uid <= last; uid++) {
      const claim = byUid.get(uid);
      if (claim && !(await orphaned(claim))) continue;
      if (hostKnowsUser(uid)) continue;
      if (claim) {
        // A deploy died between claiming and unpacking, or its deploy directory went: once nothing of
        // it runs, the id is free, and what it left in the shared temporary directories goes with it.
        // Another deploy directory's claim is never killed from here (its version may run where this
        // process cannot see that directory: another mount namespace, a container): taken only idle.
        // Whether anything runs as it is known only within the claimer's PID namespace (a deployer in a
        // container sees none of the host's processes): a claim from another one is never taken.
        if (!this.ours(claim)) {
          if (claim.claim?.pidns === undefined || claim.claim.pidns !== ownPidNamespace()) continue;
          if (processesOfUser(uid).length > 0) continue;
        } else if (!(await this.cleared(uid))) continue;
        await deleteFilesOf(uid);
        await this.claims.remove(uid);
      }
      if (!(await this.claims.create(uid, { deployDir: this.deployDir, version: owner }))) continue;
      return this.user(uid);
    }
    throw new Error(`no deploy user id is free in ${first}-${last} (one per kept version of every deployer of this host: widen DEPLOY_UIDS or lower DEPLOY_KEEP_VERSIONS)`);
  }

  async stopAll(pipeline: string, version: string): Promise<boolean> {
    const uid = await this.find(pipeline, version);
    return uid === undefined || (await this.clearHeld(uid, `${pipeline}/${version}`)) !== 'kept';
  }

  /** Every id this deploy directory holds, cleared (the launcher's stop). */
  async stopEverything(): Promise<void> {
    for (const found of await this.claims.all()) if (this.ours(found)) await this.clearHeld(found.uid, found.claim!.version);
  }

  async release(pipeline: string, version: string): Promise<void> {
    const owner = `${pipeline}/${version}`;
    // Still running: the id stays this version's (and so nobody else's) until a later sweep clears it.
    const uid = await this.find(pipeline, version);
    if (uid === undefined || (await this.clearHeld(uid, owner)) !== 'cleared') return;
    // Its files go while the claim still holds the id (the search of /tmp is slow: not under the lock).
    await deleteFilesOf(uid);
    await this.claims.exclusively(async () => {
      if (this.ours(await this.claims.read(uid), owner)) await this.claims.remove(uid);
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

/**
 * A claim whose version directory (in its own deploy directory) is gone, old enough not to belong to a
 * deploy under way (the directory is made before the claim). One that does not parse never is.
 */
async function orphaned(found: FoundClaim): Promise<boolean> {
  if (!found.claim || Date.now() - found.mtimeMs < ORPHAN_CLAIM_MS) return false;
  return !(await exists(join(found.claim.deployDir, found.claim.version)));
}
