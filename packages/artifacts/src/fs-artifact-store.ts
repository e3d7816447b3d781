import { createHash, randomUUID } from 'node:crypto';
import { createReadStream, type WriteStream } from 'node:fs';
import { chmod, lchown, link, lstat, mkdir, open, rm, stat, symlink } from 'node:fs/promises';
import { dirname, isAbsolute, join, relative, resolve, sep } from 'node:path';
import { constants } from 'node:fs';
import { pipeline as connect, Readable, Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { create, extract } from 'tar';
import type { ArtifactRef } from '@conveyor/contracts';
import type { ArtifactReader, ArtifactStore, PrunableArtifactStore, ReadableArtifactStore, StoredRunArtifacts } from './artifact-store.js';
import { listRunDirs, removeRunDir, RUNS_DIR } from './fs-run-retention.js';

const KEY = /^[A-Za-z0-9][A-Za-z0-9._/-]*$/;

async function sha256File(path: string): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

/** Artifacts up to this size are checked whole before the first byte is given out. */
export const SMALL_ARTIFACT_BYTES = 1024 * 1024;

/** A stored artifact that is not what its ref says (size or digest): it cannot be given out. */
export class ArtifactCorruptError extends Error {
  override name = 'ArtifactCorruptError';
}

/**
 * Passes bytes through, holding back the last chunk until their sha256 is known: it goes out only when
 * the digest is `ref`'s, else the stream fails before its end.
 */
function verifiedLast(ref: ArtifactRef): Transform {
  const hash = createHash('sha256');
  let held: Buffer | undefined;
  return new Transform({
    transform(chunk: Buffer, _enc, done) {
      hash.update(chunk);
      const out = held;
      held = chunk;
      done(null, out);
    },
    flush(done) {
      const actual = hash.digest('hex');
      if (actual !== ref.sha256) return done(new ArtifactCorruptError(`artifact ${ref.key} is corrupt: sha256 ${actual} != ${ref.sha256}`));
      done(null, held);
    },
  });
}

/**
 * node-tar's cache of the files it packed, which makes a file it meets again (another name of one
 * inode: a hard link) a hard-link entry. This one remembers nothing, so every name is stored whole:
 * the runner stages an artifact's files as hard links to the workspace's (a symlink stored as its
 * content is one inode with its target), an artifact must not depend on how they were staged, and
 * node-tar 7.5 throws an uncaught "write after end" when the last two entries are hard links.
 */
class NoHardLinks extends Map<`${number}:${number}`, string> {
  override set(): this {
    return this;
  }
}

/**
 * The largest artifact stored when none is set (`ARTIFACT_MAX_BYTES`): 2 GiB. Room for any ordinary build
 * output or source tree (a Linux kernel checkout archives to about 1.5 GB), while a build or a repository
 * can no longer make the store write without end: a sparse file, or one blob named many times, is stored
 * expanded.
 */
export const DEFAULT_ARTIFACT_MAX_BYTES = 2 * 1024 ** 3;

/** `1048576 bytes, 1 MiB`: exact, and readable when it is a round number of a unit. */
export function describeBytes(bytes: number): string {
  for (const [unit, size] of [['GiB', 1024 ** 3], ['MiB', 1024 ** 2], ['KiB', 1024]] as const) {
    if (bytes >= size && bytes % size === 0) return `${bytes} bytes, ${bytes / size} ${unit}`;
  }
  return `${bytes} bytes`;
}

/** An artifact (or source snapshot) past the store's limit: storing it again would fail again. */
export class ArtifactTooLargeError extends Error {
  override readonly name = 'ArtifactTooLargeError';
  constructor(
    readonly limit: number,
    what = 'artifact',
  ) {
    super(`${what} is larger than ARTIFACT_MAX_BYTES (${describeBytes(limit)})`);
  }
}

/** Passes bytes on until more than `limit` have gone through, then fails with ArtifactTooLargeError. */
export function byteLimit(limit: number, what?: string): Transform {
  let seen = 0;
  return new Transform({
    transform(chunk: Buffer, _encoding, done) {
      seen += chunk.length;
      if (seen > limit) done(new ArtifactTooLargeError(limit, what));
      else done(null, chunk);
    },
  });
}

/** The least a tar of these files (relative to `dir`) takes: a header each, regular files' content in 512-byte blocks, the end. */
async function tarSizeAtLeast(dir: string, files: readonly string[]): Promise<number> {
  let bytes = 1024;
  // 256 at a time: a serial pass over a million files would take as long as the packing.
  for (let at = 0; at < files.length; at += 256) {
    const infos = await Promise.all(files.slice(at, at + 256).map((f) => lstat(resolve(dir, f)).catch(() => undefined)));
    for (const info of infos) bytes += 512 + (info?.isFile() ? Math.ceil(info.size / 512) * 512 : 0);
  }
  return bytes;
}

export interface FsArtifactStoreOptions {
  /** The largest artifact stored, in bytes (`ARTIFACT_MAX_BYTES`); default DEFAULT_ARTIFACT_MAX_BYTES. */
  maxBytes?: number;
}

/** Artifacts as tar files under one local directory. The default store on one machine. */
export class FsArtifactStore implements ArtifactStore, PrunableArtifactStore, ReadableArtifactStore {
  readonly root: string;
  readonly maxBytes: number;
  constructor(root: string, options: FsArtifactStoreOptions = {}) {
    this.root = resolve(root);
    this.maxBytes = options.maxBytes ?? DEFAULT_ARTIFACT_MAX_BYTES;
    if (!Number.isSafeInteger(this.maxBytes) || this.maxBytes < 1) throw new Error(`invalid artifact size limit: ${this.maxBytes}`);
  }

  private pathFor(key: string): string {
    if (!KEY.test(key) || key.split('/').includes('..')) throw new Error(`invalid artifact key: ${key}`);
    const path = resolve(this.root, key);
    if (!path.startsWith(this.root + sep)) throw new Error(`artifact key escapes the store: ${key}`);
    return path;
  }

  /**
   * Write-once: the first writer of a key wins and later writers get the stored artifact's ref.
   * Two deliveries of one job (a worker that lost its lock) so agree on one artifact, and an
   * artifact already handed to a later stage never changes under it.
   */
  private async commit(key: string, tmp: string): Promise<ArtifactRef> {
    const final = this.pathFor(key);
    try {
      await link(tmp, final);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    } finally {
      await rm(tmp, { force: true });
    }
    await this.giveToStoreOwner(final);
    const [sha256, info] = await Promise.all([sha256File(final), stat(final)]);
    return { key, sha256, bytes: info.size };
  }

  /** The store's owner, when this process is root and the store another user's (see giveToStoreOwner). */
  private async otherOwner(): Promise<{ uid: number; gid: number } | undefined> {
    if (process.getuid?.() !== 0) return undefined;
    const owner = await stat(this.root);
    return owner.uid === 0 ? undefined : { uid: owner.uid, gid: owner.gid };
  }

  /**
   * The temporary file an artifact is written to (0600, new): given to the store's owner through its
   * descriptor, before any byte or name of it is there to race (giveToStoreOwner then finds it theirs).
   */
  private async createTmp(tmp: string): Promise<WriteStream> {
    const handle = await open(tmp, 'wx', 0o600);
    try {
      const owner = await this.otherOwner();
      if (owner) await handle.chown(owner.uid, owner.gid);
    } catch (err) {
      await handle.close();
      throw err;
    }
    return handle.createWriteStream();
  }

  /**
   * A root service writing into a store another user owns (Docker Compose: the volume is the image's
   * `node` user's, and source-webhook runs as `node` while build and test-runner run as root) hands the
   * file, and the directories on its way, to that owner: else the services running as the owner could
   * not read what root stored (a 0600 file of root's). lchown: nothing here follows a link.
   */
  private async giveToStoreOwner(file: string): Promise<void> {
    const owner = await this.otherOwner();
    if (!owner) return;
    const parts = relative(this.root, file).split(sep);
    for (let i = 1; i <= parts.length; i++) {
      const path = join(this.root, ...parts.slice(0, i));
      const info = await lstat(path);
      if (info.uid === 0) await lchown(path, owner.uid, owner.gid);
    }
  }

  private async tmpFor(key: string): Promise<string> {
    const final = this.pathFor(key);
    // The store is the services' alone: builds running as other users must not read other pipelines'
    // sources and artifacts through it (the services reach it as their own user, or as root).
    await mkdir(this.root, { recursive: true });
    await chmod(this.root, 0o700);
    await mkdir(dirname(final), { recursive: true });
    return `${final}.${randomUUID()}.tmp`;
  }

  /** Copied through a count of its bytes: past `maxBytes` the copy stops (the rest is never read) and nothing is stored. */
  async putTar(key: string, tarPath: string): Promise<ArtifactRef> {
    const tmp = await this.tmpFor(key);
    try {
      await pipeline(createReadStream(tarPath), byteLimit(this.maxBytes), await this.createTmp(tmp));
    } catch (err) {
      await rm(tmp, { force: true });
      throw err;
    }
    return this.commit(key, tmp);
  }

  /**
   * Packed through a count of the tar's bytes as they are written: past `maxBytes` the packing stops and
   * the partial file is removed. A sparse file is stored expanded, and so counted. An artifact whose
   * files alone pass the limit is refused before a byte is written.
   */
  async putFiles(key: string, dir: string, files: readonly string[], opts: { signal?: AbortSignal } = {}): Promise<ArtifactRef> {
    const { signal } = opts;
    signal?.throwIfAborted();
    const tmp = await this.tmpFor(key);
    try {
      for (const f of files) {
        // `..` itself or a path through it leaves; a name that starts with two dots (`..env`) does not.
        const rel = relative(dir, resolve(dir, f));
        if (isAbsolute(f) || rel === '..' || rel.startsWith(`..${sep}`) || isAbsolute(rel)) throw new Error(`artifact file outside its directory: ${f}`);
      }
      if ((await tarSizeAtLeast(dir, files)) > this.maxBytes) throw new ArtifactTooLargeError(this.maxBytes);
      signal?.throwIfAborted();
      // portable: no uid/gid/mtime noise; symlinks are stored as links, never followed; hard links whole.
      // node-tar reads a name starting with `@` as an archive to copy entries from: `./` keeps it a file.
      const pack = create({ cwd: dir, portable: true, noDirRecurse: true, linkCache: new NoHardLinks() }, files.map((f) => (f.startsWith('@') ? `./${f}` : f)));
      try {
        // Read as an iterator (a stopped one pauses the packer), never piped: pipeline would destroy the
        // packer on a failure, and node-tar goes on reading into a destroyed stream.
        await pipeline({ [Symbol.asyncIterator]: () => pack[Symbol.asyncIterator]() }, byteLimit(this.maxBytes), await this.createTmp(tmp), signal ? { signal } : {});
      } catch (err) {
        // Stopped midway (by the limit, a failure or the signal), node-tar keeps the files it was reading open: let it read them to their end (what
        // is left is within the limit, checked above) into nothing, so it closes them.
        pack.on('error', () => undefined);
        pack.resume();
        throw err;
      }
      signal?.throwIfAborted();
      return await this.commit(key, tmp);
    } catch (err) {
      await rm(tmp, { force: true });
      // Stopped: the signal's reason, not the pipeline's AbortError, says why.
      signal?.throwIfAborted();
      throw err;
    }
  }

  /** The runs with artifacts here: real directories under `runs/` named as run ids (fs-run-retention.ts). */
  listRuns(): Promise<StoredRunArtifacts[]> {
    return listRunDirs(this.root);
  }

  /** Removes `runs/<runId>/` whole, confined to it (fs-run-retention.ts). */
  removeRun(runId: string): Promise<number | undefined> {
    return removeRunDir(this.root, runId);
  }

  /**
   * A file of the wrong size, or (up to SMALL_ARTIFACT_BYTES, read whole first) of the wrong digest, is
   * refused at once with ArtifactCorruptError; a larger one is checked as it is read (see verifiedLast).
   */
  async open(ref: ArtifactRef): Promise<ArtifactReader | undefined> {
    const path = this.pathFor(ref.key);
    // Opened once (never through a link), then sized and read through the one descriptor: a removal meanwhile changes nothing.
    const handle = await open(path, constants.O_RDONLY | constants.O_NOFOLLOW).catch((err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT') return undefined;
      throw err;
    });
    if (!handle) return undefined;
    try {
      const info = await handle.stat();
      if (!info.isFile()) throw new ArtifactCorruptError(`artifact ${ref.key} is not a file`);
      if (info.size !== ref.bytes) throw new ArtifactCorruptError(`artifact ${ref.key} is corrupt: ${info.size} bytes stored, ${ref.bytes} recorded`);
      if (info.size <= SMALL_ARTIFACT_BYTES) {
        const whole = await handle.readFile();
        await handle.close();
        const actual = createHash('sha256').update(whole).digest('hex');
        if (actual !== ref.sha256) throw new ArtifactCorruptError(`artifact ${ref.key} is corrupt: sha256 ${actual} != ${ref.sha256}`);
        return { bytes: whole.length, stream: Readable.from([whole], { objectMode: false }) };
      }
      // Connected so that an error or an early stop on either side ends both (and closes the file).
      return { bytes: info.size, stream: connect(handle.createReadStream(), verifiedLast(ref), () => undefined) };
    } catch (err) {
      await handle.close().catch(() => undefined);
      throw err;
    }
  }

  async extractTo(ref: ArtifactRef, dir: string): Promise<void> {
    const path = this.pathFor(ref.key);
    const actual = await sha256File(path);
    if (actual !== ref.sha256) throw new Error(`artifact ${ref.key} is corrupt: sha256 ${actual} != ${ref.sha256}`);
    await mkdir(dir, { recursive: true });
    // Symbolic links come out as they went in (as `git checkout` makes them: a repository may hold a
    // link to /usr/bin/env, or to a sibling outside it), but only once everything else is written, so
    // nothing is ever written through one. Whoever later reads the tree as root must not follow them
    // (the buildspec and reports are read confined to the workspace; chowns do not dereference).
    const links: { path: string; linkpath: string }[] = [];
    try {
      // node-tar strips absolute paths and `..` (preservePaths false) and refuses to write through symlinks.
      // No setuid or setgid bit comes out of an artifact: extracted by root, such a file would be root's.
      await extract({
        file: path,
        cwd: dir,
        strict: true,
        preservePaths: false,
        preserveOwner: false,
        filter: (entryPath, entry) => {
          if ('type' in entry && entry.type === 'SymbolicLink') {
            links.push({ path: entryPath, linkpath: String((entry as { linkpath?: string }).linkpath ?? '') });
            return false;
          }
          if ('mode' in entry && typeof entry.mode === 'number') entry.mode &= 0o1777;
          return true;
        },
      });
    } catch (err) {
      // node-tar's own refusals: `code` TAR_*, or a file system code with `tarCode` TAR_ENTRY_ERROR (a link to nothing).
      const { code, tarCode } = err as { code?: string; tarCode?: string };
      if (code?.startsWith('TAR_') || tarCode?.startsWith('TAR_')) throw new ArtifactContentError(`artifact ${ref.key} cannot be unpacked: ${(err as Error).message}`);
      throw err;
    }
    for (const link of links) await placeLink(dir, link.path, link.linkpath, ref.key);
  }
}

/** An artifact whose content cannot be unpacked as it is: unpacking it again would fail again. */
export class ArtifactContentError extends Error {
  override readonly name = 'ArtifactContentError';
}

/** Makes the link `path` (relative to `dir`, inside it) → `target`, through real directories only. */
async function placeLink(dir: string, path: string, target: string, key: string): Promise<void> {
  const parts = path.split('/').filter((p) => p !== '' && p !== '.');
  if (isAbsolute(path) || parts.length === 0 || parts.includes('..') || target === '' || target.includes('\0')) {
    throw new ArtifactContentError(`artifact ${key} holds a link entry ${JSON.stringify(path)} that leaves its directory`);
  }
  let at = dir;
  for (const part of parts.slice(0, -1)) {
    at = join(at, part);
    const info = await lstat(at).catch(() => undefined);
    if (!info) await mkdir(at);
    else if (!info.isDirectory()) throw new ArtifactContentError(`artifact ${key}: the link ${path} would be made through ${relative(dir, at)}, which is not a directory`);
  }
  try {
    await symlink(target, join(at, parts[parts.length - 1]!));
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') throw new ArtifactContentError(`artifact ${key} holds ${path} twice (a link and something else)`);
    throw err;
  }
}

/** Keys used by the stages, in one place: `runs/<runId>/<stage>-<attempt>.tar`. */
export function artifactKey(runId: string, stage: string, attempt: number): string {
  return join(RUNS_DIR, runId, `${stage}-${attempt}.tar`).split(sep).join('/');
}
