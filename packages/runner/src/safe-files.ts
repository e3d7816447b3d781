import { constants } from 'node:fs';
import { lstat, open, stat, type FileHandle } from 'node:fs/promises';
import { dirname } from 'node:path';
import type { BuildUser } from './shell-process.js';

/*
 * The service (root) creates and reads files where a build, running as another user, has a say: its
 * control files, its workspace. Opened by path the usual way, a symlink the build planted would send
 * root's write or read to any file of the host, and a FIFO would block it for good. These two
 * functions are the only ways root touches such a file.
 */

/** A new file only: refuses any existing entry, a symlink or FIFO included (O_EXCL, O_NOFOLLOW). */
const CREATE = constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW;
/** Never through a final symlink, never waiting for a FIFO's writer, never taking a terminal. */
const READ = constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK | constants.O_NOCTTY;

/**
 * Creates `path` (0600, or `mode`) with `text` and, given a user, hands it over through the open
 * descriptor: a chown by path would follow whatever the path leads to by then.
 */
export async function createFile(path: string, text: string, user?: BuildUser, mode = 0o600): Promise<void> {
  const file = await open(path, CREATE, 0o600);
  try {
    await file.writeFile(text);
    if (user) await file.chown(user.uid, user.gid);
    if (mode !== 0o600) await file.chmod(mode);
  } finally {
    await file.close();
  }
}

/** A file root was asked to read and did not: a symlink, not a regular file, someone else's, too big. */
export class UntrustedFileError extends Error {
  override name = 'UntrustedFileError';
}

/**
 * The uid a build's files must belong to: its user's. None when the build runs as the service itself:
 * there is no boundary to keep then, and files a build made through sudo or a container are its own.
 */
export function fileOwner(user?: BuildUser): number | undefined {
  return user?.uid;
}

export interface ReadOwnedOptions {
  /** The uid the file must belong to (see fileOwner); undefined where there are no uids. */
  owner: number | undefined;
  maxBytes: number;
  /** Names the file in errors; default its path. */
  name?: string;
}

function kindOf(info: { isDirectory(): boolean; isFIFO(): boolean; isSocket(): boolean }): string {
  return info.isDirectory() ? 'a directory' : info.isFIFO() ? 'a FIFO' : info.isSocket() ? 'a socket' : 'a device';
}

/**
 * Opens a file a build may have replaced, if what the path leads to now is a regular file of the
 * build's user. The checks are made on the open descriptor, so they hold for what is read,
 * whichever directory of the path the build swapped meanwhile: a file its user owns is one it could
 * read anyway. The caller closes the handle. `size` is fstat's, before any read: the file may grow.
 */
export async function openOwnedFile(path: string, opts: Omit<ReadOwnedOptions, 'maxBytes'>): Promise<{ file: FileHandle; size: number }> {
  const name = opts.name ?? path;
  const file = await open(path, READ).catch((err: NodeJS.ErrnoException) => {
    throw err.code === 'ELOOP' ? new UntrustedFileError(`${name} is a symlink; it is not read`) : err;
  });
  try {
    const info = await file.stat();
    if (!info.isFile()) throw new UntrustedFileError(`${name} is ${kindOf(info)}, not a regular file; it is not read`);
    if (opts.owner !== undefined && info.uid !== opts.owner) {
      throw new UntrustedFileError(`${name} belongs to uid ${info.uid}, not to the build's user (uid ${opts.owner}); it is not read`);
    }
    return { file, size: info.size };
  } catch (err) {
    await file.close();
    throw err;
  }
}

/** Reads a file a build may have replaced (see openOwnedFile), no larger than `maxBytes`. */
export async function readOwnedFile(path: string, opts: ReadOwnedOptions): Promise<Buffer> {
  const name = opts.name ?? path;
  const { file } = await openOwnedFile(path, opts);
  try {
    // Read in chunks to the limit: the file may still grow after fstat.
    const chunks: Buffer[] = [];
    let total = 0;
    for (;;) {
      const { bytesRead, buffer } = await file.read({ buffer: Buffer.alloc(64 * 1024) });
      if (bytesRead === 0) break;
      total += bytesRead;
      if (total > opts.maxBytes) throw new UntrustedFileError(`${name} is larger than ${opts.maxBytes} bytes`);
      chunks.push(buffer.subarray(0, bytesRead));
    }
    return Buffer.concat(chunks);
  } finally {
    await file.close();
  }
}

/**
 * The first of `dir` and its ancestors in which `user` may rename or replace entries (so could swap
 * `dir`, or what root makes in it, for a symlink), if any. A sticky ancestor protects others' entries;
 * `dir` itself gets no such pass: its own entries are what root makes.
 */
export async function replaceableBy(dir: string, user: BuildUser): Promise<string | undefined> {
  for (let d = dir; ; d = dirname(d)) {
    const info = await stat(d);
    const sticky = d !== dir && (info.mode & 0o1000) !== 0;
    const writable = info.uid === user.uid || (!sticky && ((info.mode & 0o002) !== 0 || (info.gid === user.gid && (info.mode & 0o020) !== 0)));
    if (writable) return d;
    if (dirname(d) === d) return undefined;
  }
}

/**
 * Whether `dir` is this process's own: a directory (not a symlink) of its user that no one else may
 * write. What such a directory holds was put there by this user (or root) alone.
 */
export async function ownPrivateDir(dir: string): Promise<boolean> {
  const info = await lstat(dir).catch(() => undefined);
  const me = process.getuid?.();
  return info !== undefined && info.isDirectory() && (me === undefined || info.uid === me) && (info.mode & 0o022) === 0;
}
