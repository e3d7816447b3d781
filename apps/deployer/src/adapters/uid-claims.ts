import { readlinkSync } from 'node:fs';
import { link, lstat, mkdir, open, readdir, readFile, rm, rmdir, stat, utimes } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { z } from 'zod';
import { holdFileLock } from '@conveyor/procfs';
import { ownPrivateDir } from '@conveyor/runner';

/**
 * DEPLOY_UID_CLAIMS_DIR's default. Not under /run: a claim lasts as long as its version's directory,
 * whose files the id owns, and those survive a reboot (an id given out again after one would let a
 * new version into an old one's files).
 */
export const DEFAULT_UID_CLAIMS_DIR = '/var/lib/conveyor/deploy-uids';

/** Under DEPLOY_DIR: where deployers before DEPLOY_UID_CLAIMS_DIR kept their claims (files `<uid>` naming `<pipeline>/<version>`). */
export const LEGACY_CLAIMS_DIR = '.uids';

/** `<DEPLOY_UID_CLAIMS_DIR>/<uid>`: written by the deployer that gave the id to a version. */
export const UidClaim = z.object({
  /** The version's deploy directory: absolute, links resolved. */
  deployDir: z.string().startsWith('/'),
  /** `<pipeline>/<version>` under it. */
  version: z
    .string()
    .regex(/^[^/]+\/[^/]+$/)
    .refine((v) => v.split('/').every((part) => part !== '.' && part !== '..'), 'must name a directory under the deploy directory'),
  /**
   * The PID namespace of the deployer that claimed it (`pid:[…]`, from /proc/self/ns/pid): only a
   * deployer in the same one can see whether anything runs as the id.
   */
  pidns: z.string().optional(),
});
export type UidClaim = z.infer<typeof UidClaim>;

/** This process's PID namespace (`pid:[4026531836]`), when /proc says. */
export function ownPidNamespace(): string | undefined {
  try {
    return readlinkSync('/proc/self/ns/pid');
  } catch {
    return undefined;
  }
}

/** A claim file as found. Without `claim` when it does not parse: held by nobody known, so never ours and never taken back. */
export interface FoundClaim {
  uid: number;
  mtimeMs: number;
  claim?: UidClaim;
}

/**
 * The host's register of which deploy user id is whose: one file per id in a directory only root may
 * write, changed under the kernel's lock on its `.lock` (and, within this process, one change at a
 * time), so deployers with different DEPLOY_DIRs never give one id twice.
 */
export class UidClaims {
  private queue: Promise<unknown> = Promise.resolve();
  constructor(readonly dir: string) {}

  async all(): Promise<FoundClaim[]> {
    const found = await Promise.all((await readdir(this.dir)).filter((n) => /^\d+$/.test(n)).map((n) => this.read(Number(n))));
    return found.filter((c): c is FoundClaim => c !== undefined);
  }

  async read(uid: number): Promise<FoundClaim | undefined> {
    const path = join(this.dir, String(uid));
    const [text, info] = await Promise.all([readFile(path, 'utf8').catch(() => undefined), stat(path).catch(() => undefined)]);
    if (text === undefined || !info) return undefined;
    let claim: UidClaim | undefined;
    try {
      claim = UidClaim.parse(JSON.parse(text));
    } catch {
      claim = undefined;
    }
    return { uid, mtimeMs: info.mtimeMs, ...(claim ? { claim } : {}) };
  }

  /**
   * Under `exclusively` only. Written whole, then linked into place (no half-written claim after a
   * crash); false if the id is claimed already. `mtime`: the time of an adopted claim.
   */
  async create(uid: number, claim: { deployDir: string; version: string }, mtime?: Date): Promise<boolean> {
    const pidns = ownPidNamespace();
    const staged = join(this.dir, '.staged');
    await rm(staged, { force: true });
    const fh = await open(staged, 'wx', 0o600);
    try {
      await fh.writeFile(`${JSON.stringify({ ...claim, ...(pidns ? { pidns } : {}) })}\n`);
    } finally {
      await fh.close();
    }
    try {
      if (mtime) await utimes(staged, mtime, mtime);
      await link(staged, join(this.dir, String(uid)));
      return true;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'EEXIST') return false;
      throw err;
    } finally {
      await rm(staged, { force: true });
    }
  }

  /** Under `exclusively` only. */
  remove(uid: number): Promise<void> {
    return rm(join(this.dir, String(uid)), { force: true });
  }

  exclusively<T>(fn: () => Promise<T>): Promise<T> {
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
}

/** Opens (making it 0700 if missing) the register at `dir`; refused unless it is root's alone. */
export async function openUidClaims(dir: string): Promise<UidClaims> {
  await mkdir(dirname(dir), { recursive: true });
  await mkdir(dir, { mode: 0o700 }).catch((err: NodeJS.ErrnoException) => {
    if (err.code !== 'EEXIST') throw err;
  });
  if (!(await ownPrivateDir(dir))) {
    throw new Error(`DEPLOY_UID_CLAIMS_DIR ${dir} must be a directory of the deployer's user that nobody else may write to (it says which user ids are whose, host-wide)`);
  }
  return new UidClaims(dir);
}

export const exists = (path: string) => lstat(path).then(() => true, () => false);

/**
 * Moves the claims an older deployer left in `<deployDir>/.uids` into the register, their times kept
 * (the orphan rule counts from them): an upgrade never gives out an id a version still runs as. An id
 * the register gives to another deploy directory already (both had it, from before the register) stays
 * that directory's: its claim here is left in place, and said in what is returned, while its version's
 * directory is kept (this deployer never kills as that id); once that directory is gone it is dropped.
 */
export async function adoptLegacyClaims(claims: UidClaims, deployDir: string): Promise<string[]> {
  const legacy = join(deployDir, LEGACY_CLAIMS_DIR);
  if (!(await exists(legacy))) return [];
  if (!(await ownPrivateDir(legacy))) return [`${legacy} is not the deployer's alone: its claims were not adopted`];
  const shared: string[] = [];
  await claims.exclusively(async () => {
    for (const name of (await readdir(legacy)).filter((n) => /^\d+$/.test(n))) {
      const path = join(legacy, name);
      const [text, info] = await Promise.all([readFile(path, 'utf8').catch(() => undefined), stat(path).catch(() => undefined)]);
      if (text === undefined || !info) continue;
      const uid = Number(name);
      const version = text.trim();
      const held = await claims.read(uid);
      const ours = held?.claim?.deployDir === deployDir && held.claim.version === version;
      if (!held && !(await claims.create(uid, { deployDir, version }, info.mtime))) continue;
      if (held && !ours && (await exists(join(deployDir, version)))) {
        const whose = held.claim ? `${held.claim.version} in ${held.claim.deployDir}` : 'claimed by a file that does not parse';
        shared.push(`user id ${uid} of ${version} (claimed in ${legacy} before DEPLOY_UID_CLAIMS_DIR) is also ${whose}; this deployer never kills as it: stop that version by hand`);
        continue;
      }
      await rm(path, { force: true });
    }
    if ((await readdir(legacy)).every((n) => !/^\d+$/.test(n))) {
      await rm(join(legacy, '.lock'), { force: true });
      await rmdir(legacy).catch(() => undefined);
    }
  });
  return shared;
}
