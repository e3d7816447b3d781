import { createHash, randomUUID } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { chmod, copyFile, link, lstat, mkdir, rm, stat, symlink } from 'node:fs/promises';
import { dirname, isAbsolute, join, relative, resolve, sep } from 'node:path';
import { create, extract } from 'tar';
import type { ArtifactRef } from '@conveyor/contracts';
import type { ArtifactStore } from './artifact-store.js';

const KEY = /^[A-Za-z0-9][A-Za-z0-9._/-]*$/;

async function sha256File(path: string): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer);
  return hash.digest('hex');
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

/** Artifacts as tar files under one local directory. The default store on one machine. */
export class FsArtifactStore implements ArtifactStore {
  readonly root: string;
  constructor(root: string) {
    this.root = resolve(root);
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
    const [sha256, info] = await Promise.all([sha256File(final), stat(final)]);
    return { key, sha256, bytes: info.size };
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

  async putTar(key: string, tarPath: string): Promise<ArtifactRef> {
    const tmp = await this.tmpFor(key);
    try {
      await copyFile(tarPath, tmp);
    } catch (err) {
      await rm(tmp, { force: true });
      throw err;
    }
    return this.commit(key, tmp);
  }

  async putFiles(key: string, dir: string, files: readonly string[]): Promise<ArtifactRef> {
    const tmp = await this.tmpFor(key);
    try {
      for (const f of files) {
        if (isAbsolute(f) || relative(dir, resolve(dir, f)).startsWith('..')) throw new Error(`artifact file outside its directory: ${f}`);
      }
      // portable: no uid/gid/mtime noise; symlinks are stored as links, never followed; hard links whole.
      await create({ file: tmp, cwd: dir, portable: true, noDirRecurse: true, linkCache: new NoHardLinks() }, [...files]);
      return await this.commit(key, tmp);
    } catch (err) {
      await rm(tmp, { force: true });
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
  return join('runs', runId, `${stage}-${attempt}.tar`).split(sep).join('/');
}
