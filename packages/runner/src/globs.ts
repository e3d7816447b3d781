import { isUtf8 } from 'node:buffer';
import type { Dirent } from 'node:fs';
import { cp, link, lstat, mkdir, readdir, readlink, realpath, type FileHandle } from 'node:fs/promises';
import { basename, dirname, isAbsolute, join, posix, relative, resolve, sep } from 'node:path';
import picomatch from 'picomatch';
import { checkGlobShape, GlobError, GlobMatcher, type Glob } from '@conveyor/globs';
import { FileSelectionError } from './file-selection-error.js';
import { fileOwner, openOwnedFile, readOwnedFile } from './safe-files.js';
import type { BuildUser } from './shell-process.js';

/** Which files an `artifacts` or `reports` section selects (camel-cased buildspec keys). */
export interface FileSelection {
  files: readonly string[];
  baseDirectory?: string;
  discardPaths?: boolean;
  excludePaths?: readonly string[];
  /**
   * CodeBuild's `enable-symlinks`. Off (the default), a selected symlink stands for the file it leads
   * to, whose content is stored. On, a symlink is kept as a link, if it leads to a place inside the
   * artifact. Either way a symlink leading out of the workspace is an error.
   */
  enableSymlinks?: boolean;
  /** Without it, matching nothing is an error (as CodeBuild fails on "no matching artifact paths"). */
  allowEmpty?: boolean;
  /** Names the section in error messages, e.g. `artifacts` or `reports.unit`. */
  label?: string;
}

export interface ResolvedFiles {
  /** Real path of the workspace. */
  workspace: string;
  /** Real path of the base directory (the workspace, or base-directory inside it). */
  base: string;
  /** Matched files relative to `base`, POSIX separators, sorted. Symlinks are listed, never followed. */
  files: string[];
  /**
   * Each file with its name in the artifact: the same path, or its file name under discard-paths.
   * `symlink` for a symlink: `content` (stored as the file it leads to) or `link` (kept as a link).
   */
  entries: Array<{ path: string; name: string; symlink?: 'content' | 'link' }>;
}

export { FileSelectionError };

const MAX_ENTRIES = 1_000_000;

/** The buildspec's kebab-case section as a FileSelection. */
export function fileSelection(
  section: { files: readonly string[]; 'base-directory'?: string; 'discard-paths'?: boolean; 'exclude-paths'?: readonly string[]; 'enable-symlinks'?: boolean },
  label?: string,
): FileSelection {
  return {
    files: section.files,
    ...(section['base-directory'] !== undefined ? { baseDirectory: section['base-directory'] } : {}),
    ...(section['discard-paths'] !== undefined ? { discardPaths: section['discard-paths'] } : {}),
    ...(section['exclude-paths'] !== undefined ? { excludePaths: section['exclude-paths'] } : {}),
    ...(section['enable-symlinks'] !== undefined ? { enableSymlinks: section['enable-symlinks'] } : {}),
    ...(label !== undefined ? { label } : {}),
  };
}

function isInside(root: string, path: string): boolean {
  return path === root || path.startsWith(root + sep);
}

/** Patterns are relative and stay below their directory: no absolute paths, no `..`; and within GLOB_LIMITS. */
function normalisePattern(pattern: string, field: string): string {
  checkGlobShape(pattern, field);
  const p = pattern.replace(/^(\.\/)+/, '');
  if (p === '' || isAbsolute(p) || p.split('/').includes('..')) {
    throw new FileSelectionError(`${field}: "${pattern}" must be a relative path inside the workspace`);
  }
  return p;
}

/** The section's globs of one field, each named by its index (`artifacts.files[0]`). */
function globsOf(patterns: readonly string[], field: string): Glob[] {
  return patterns.map((p, i) => ({ field: `${field}[${i}]`, pattern: normalisePattern(p, `${field}[${i}]`) }));
}

async function realInside(root: string, path: string, field: string): Promise<string> {
  const real = await realpath(path).catch((err: NodeJS.ErrnoException) => {
    throw new FileSelectionError(`${field}: ${relative(root, path) || '.'} ${err.code === 'ENOENT' ? 'does not exist' : `cannot be read (${err.code})`}`);
  });
  if (!isInside(root, real)) throw new FileSelectionError(`${field}: ${relative(root, path)} resolves to ${real}, outside the workspace`);
  return real;
}

interface Found {
  /** Its path relative to the walk's root, POSIX separators; a name that is not UTF-8 is decoded with U+FFFD (see `notUtf8`). */
  rel: string;
  symlink: boolean;
  dir: boolean;
  /** What it is when it is none of a file, a directory or a symlink (a FIFO, say). */
  other?: string;
  /**
   * Its path as written, bytes that are not UTF-8 shown as `\xNN`, when a name on it (its own or a
   * directory's) is not UTF-8: `rel` then names no file (U+FFFD in place of those bytes), and the
   * artifact store and the reports reader take names as text. Refused once selected (notUtf8Error).
   */
  notUtf8?: string;
}

/** A name as written: valid UTF-8 as text, any other byte as `\xNN`. */
function escapeName(name: Buffer): string {
  let out = '';
  for (let i = 0; i < name.length; ) {
    const b = name[i]!;
    const len = b < 0x80 ? 1 : b >= 0xc2 && b <= 0xdf ? 2 : b >= 0xe0 && b <= 0xef ? 3 : b >= 0xf0 && b <= 0xf4 ? 4 : 0;
    const seq = len > 0 && i + len <= name.length ? name.subarray(i, i + len) : undefined;
    if (seq && isUtf8(seq)) {
      out += seq.toString('utf8');
      i += len;
    } else {
      out += `\\x${b.toString(16).padStart(2, '0')}`;
      i += 1;
    }
  }
  return out;
}

function notUtf8Error(field: string, shown: string): FileSelectionError {
  return new FileSelectionError(
    `${field}: ${shown} has a name that is not UTF-8 (the bytes shown as \\xNN); Conveyor stores and reads files by names that are text, so it cannot be selected: rename it, or list it in exclude-paths`,
  );
}

function otherKind(e: { isFIFO(): boolean; isSocket(): boolean; isBlockDevice(): boolean; isCharacterDevice(): boolean }): string | undefined {
  if (e.isFIFO()) return 'a FIFO';
  if (e.isSocket()) return 'a socket';
  if (e.isBlockDevice() || e.isCharacterDevice()) return 'a device';
  return undefined;
}

const SLASH = Buffer.from('/');

/**
 * Lists everything under `starts` (relative to root) without following symlinks. Names are read as
 * bytes, so a directory whose name is not UTF-8 is still walked (its files are found, and refused if
 * selected: see Found's `notUtf8`). A directory that cannot be listed (EACCES, EMFILE, EIO…) is an
 * error naming it, never a silent gap in the selection; one that is gone (the build may still have
 * had a process running) or is not a directory (a pattern's literal directory that is a file) has
 * nothing to list.
 */
async function walk(root: string, starts: readonly string[], field: string, blocked?: Blocked[]): Promise<Found[]> {
  const found: Found[] = [];
  const stack: Array<{ rel: string; path: Buffer; shown?: string }> = starts.map((s) => ({ rel: s, path: Buffer.from(join(root, s)) }));
  while (stack.length > 0) {
    const dir = stack.pop()!;
    let entries: Dirent<Buffer>[];
    try {
      entries = await readdir(dir.path, { withFileTypes: true, encoding: 'buffer' });
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'ENOENT' || code === 'ENOTDIR') continue;
      const error = new FileSelectionError(
        `${field}: ${dir.shown ?? (dir.rel || '.')} cannot be listed (${code ?? (err as Error).message}), so the files selected could not all be found; if none of its files are wanted, list it in exclude-paths (${dir.rel ? `${escapeGlob(dir.rel)}/**` : '**'})`,
        { cause: err },
      );
      // The caller may find it excluded (a directory the build's user cannot read, left by a container, say).
      if (blocked && dir.rel) blocked.push({ rel: dir.rel, error });
      else throw error;
      continue;
    }
    for (const e of entries) {
      if (found.length >= MAX_ENTRIES) throw new FileSelectionError(`more than ${MAX_ENTRIES} entries to search; narrow the patterns`);
      const name = e.name.toString('utf8');
      const rel = dir.rel ? `${dir.rel}/${name}` : name;
      const parentShown = dir.shown ?? dir.rel;
      const shown = dir.shown !== undefined || !isUtf8(e.name) ? (parentShown ? `${parentShown}/${escapeName(e.name)}` : escapeName(e.name)) : undefined;
      if (e.isDirectory()) stack.push({ rel, path: Buffer.concat([dir.path, SLASH, e.name]), ...(shown !== undefined ? { shown } : {}) });
      const other = otherKind(e);
      if (e.isDirectory() || e.isFile() || e.isSymbolicLink() || other) {
        found.push({ rel, symlink: e.isSymbolicLink(), dir: e.isDirectory(), ...(other ? { other } : {}), ...(shown !== undefined ? { notUtf8: shown } : {}) });
      }
    }
  }
  return found;
}

/**
 * Whether `patterns` (exclude-paths) leave out every file at any depth under `dir`, read from the
 * patterns themselves (what the directory holds cannot be listed): one is `**`, or `<dir>/**` where
 * `<dir>` is a glob without extglobs that matches the directory or one above it. Any negation (`!…`)
 * among them could bring some back: then none does.
 */
export function excludesAllUnder(dir: string, patterns: readonly string[]): boolean {
  if (patterns.some((p) => p.startsWith('!'))) return false;
  return patterns.some((p) => {
    if (p === '**') return true;
    if (!p.endsWith('/**')) return false;
    const head = p.slice(0, -3);
    if (head === '' || /[!@+?*]\(/.test(head)) return false;
    const isMatch = picomatch(head, { dot: true });
    for (let d = dir; d !== ''; d = d.includes('/') ? d.slice(0, d.lastIndexOf('/')) : '') if (isMatch(d)) return true;
    return false;
  });
}

/** `path` as a glob that matches it alone (its glob characters escaped). */
function escapeGlob(path: string): string {
  return path.replace(/[\\*?[\]{}()!+@]/g, (c) => `\\${c}`);
}

/** A directory the walk could not list, with the error it is if the selection needs it. */
interface Blocked {
  rel: string;
  error: FileSelectionError;
}

/** Where to start walking for each pattern: its literal leading directories. */
function walkStarts(patterns: readonly string[]): string[] {
  const starts = patterns.map((p) => {
    const scan = picomatch.scan(p);
    const base = scan.isGlob ? scan.base : posix.dirname(p);
    return base === '.' ? '' : base;
  });
  const unique = [...new Set(starts)].sort();
  return unique.filter((s) => !unique.some((o) => o !== s && (o === '' || s.startsWith(`${o}/`))));
}

/** Start directories that exist; one reached through a symlink must still be inside the workspace. */
async function existingStarts(root: string, base: string, starts: readonly string[], field: string): Promise<string[]> {
  const out: string[] = [];
  for (const s of starts) {
    const exists = s === '' || (await lstat(join(base, s)).then(() => true, () => false));
    if (!exists) continue;
    if (s !== '') await realInside(root, join(base, s), field);
    out.push(s);
  }
  return out;
}

async function resolveBase(workspace: string, baseDirectory: string | undefined, field: string, matcher: GlobMatcher): Promise<string> {
  if (baseDirectory === undefined || baseDirectory === '' || baseDirectory === '.') return workspace;
  const pattern = normalisePattern(baseDirectory.replace(/\/+$/, ''), field);
  if (!picomatch.scan(pattern).isGlob) return realInside(workspace, join(workspace, pattern), field);
  const candidates = (await walk(workspace, walkStarts([pattern]), field)).filter((f) => f.dir || f.symlink);
  const dirs = await matcher.select([{ field, pattern }], candidates, (f) => f.rel);
  if (dirs.length !== 1) {
    const what = dirs.length === 0 ? 'matches no directory' : `matches ${dirs.length} directories (${dirs.map((d) => d.notUtf8 ?? d.rel).sort().join(', ')}); only one is supported`;
    throw new FileSelectionError(`${field}: "${baseDirectory}" ${what}`);
  }
  if (dirs[0]!.notUtf8 !== undefined) throw notUtf8Error(field, dirs[0]!.notUtf8);
  return realInside(workspace, join(workspace, dirs[0]!.rel), field);
}

/** Where a link's text leads from its name in the artifact, or undefined if that is outside the artifact. */
function withinArtifact(name: string, text: string): string | undefined {
  if (isAbsolute(text)) return undefined;
  const to = posix.normalize(posix.join(posix.dirname(name), text));
  return to === '..' || to.startsWith('../') ? undefined : to;
}

/** Why a link stored as a link (enable-symlinks: yes) would not work once unpacked, or undefined. */
function keptLinkProblem(name: string, text: string): string | undefined {
  if (withinArtifact(name, text) !== undefined) return undefined;
  if (isAbsolute(text)) return `a symlink to the absolute path ${text}, which would not lead into the artifact once unpacked; make it relative, leave enable-symlinks off to store the file, or list it in exclude-paths`;
  return `a symlink to ${text}, which leaves the artifact: enable-symlinks: yes keeps only links to a place inside it; leave enable-symlinks off to store the file, or list it in exclude-paths`;
}

/**
 * How a selected symlink goes into the artifact; never when what it leads to is outside the workspace
 * (nothing there is read or pointed at). With enable-symlinks, as a link, if it leads to a place inside
 * the artifact (from its name there: base-directory and discard-paths count). Without (CodeBuild's
 * default), as the content of what it leads to, which stageFiles checks when it opens it.
 */
async function checkSymlink(workspace: string, base: string, entry: { path: string; name: string }, keep: boolean, field: string): Promise<'content' | 'link'> {
  const abs = join(base, entry.path);
  const target = await realpath(abs).catch(async () => resolve(dirname(abs), await readlink(abs)));
  if (!isInside(workspace, target)) {
    throw new FileSelectionError(`${field}: ${entry.path} is a symlink to ${target}, outside the workspace; remove it or list it in exclude-paths`);
  }
  if (!keep) return 'content';
  const problem = keptLinkProblem(entry.name, await readlink(abs));
  if (problem) throw new FileSelectionError(`${field}: ${entry.path} is ${problem}`);
  return 'link';
}

function flatten(files: readonly string[], discard: boolean, field: string): ResolvedFiles['entries'] {
  if (!discard) return files.map((f) => ({ path: f, name: f }));
  const seen = new Map<string, string>();
  return files.map((f) => {
    const name = basename(f);
    const other = seen.get(name);
    if (other !== undefined) throw new FileSelectionError(`${field}: discard-paths puts both ${other} and ${f} at ${name}`);
    seen.set(name, f);
    return { path: f, name };
  });
}

/**
 * Resolves an artifacts/reports section the way CodeBuild reads it (`**\/*` is everything, dot
 * files included; patterns match files, not directories), confined to the workspace: nothing
 * outside it is listed, symlinked directories are not descended into, and a selected symlink
 * pointing outside it is an error rather than a silent omission, as is a selected FIFO, socket or
 * device. Lists only: read the files with readSelectedFile or stageFiles, which check what they open.
 */
export async function resolveFiles(workspace: string, selection: FileSelection): Promise<ResolvedFiles> {
  try {
    return await resolveSelection(workspace, selection);
  } catch (err) {
    // The glob package's refusals (shape, time, compiling) are file selection errors to our callers.
    if (err instanceof GlobError) throw new FileSelectionError(err.message, { cause: err });
    throw err;
  }
}

async function resolveSelection(workspace: string, selection: FileSelection): Promise<ResolvedFiles> {
  const label = selection.label ?? 'artifacts';
  // The build owns the directory around its workspace: it may have put a symlink to anywhere in its place.
  if ((await lstat(workspace)).isSymbolicLink()) throw new FileSelectionError(`${label}: the workspace ${workspace} was replaced by a symlink; nothing is read from it`);
  const root = await realpath(workspace);
  const matcher = new GlobMatcher(label);
  const base = await resolveBase(root, selection.baseDirectory, `${label}.base-directory`, matcher);
  const globs = globsOf(selection.files, `${label}.files`);
  const patterns = globs.map((g) => g.pattern);
  const excludes = globsOf(selection.excludePaths ?? [], `${label}.exclude-paths`);
  const starts = await existingStarts(root, base, walkStarts(patterns), `${label}.files`);
  const blocked: Blocked[] = [];
  const selected = await matcher.select(globs, (await walk(base, starts, `${label}.files`, blocked)).filter((f) => !f.dir), (f) => f.rel);
  // A directory that could not be listed is an error, unless exclude-paths leaves out whatever it holds:
  // then nothing of it could have been selected.
  const excludePatterns = excludes.map((g) => g.pattern);
  for (const b of blocked) if (!excludesAllUnder(b.rel, excludePatterns)) throw b.error;
  const excluded = new Set(await matcher.select(excludes, selected, (f) => f.rel));
  const found = selected.filter((f) => !excluded.has(f));
  for (const f of found) {
    if (f.notUtf8 !== undefined) throw notUtf8Error(`${label}.files`, f.notUtf8);
    if (f.other) throw new FileSelectionError(`${label}.files: ${f.rel} is ${f.other}, not a regular file; remove it or list it in exclude-paths`);
  }
  const files = found.map((f) => f.rel).sort();
  if (files.length === 0 && !selection.allowEmpty) {
    throw new FileSelectionError(`${label}.files: no files matched ${patterns.map((p) => `"${p}"`).join(', ')}`);
  }
  const links = new Set(found.filter((f) => f.symlink).map((f) => f.rel));
  const entries: ResolvedFiles['entries'] = flatten(files, selection.discardPaths ?? false, label);
  for (const e of entries) {
    if (links.has(e.path)) e.symlink = await checkSymlink(root, base, e, selection.enableSymlinks ?? false, `${label}.files`);
  }
  return { workspace: root, base, files, entries };
}

/*
 * The build's user may still change its workspace while the service reads it: a process it left
 * running can swap a checked file, or a directory on its path, for a symlink or a FIFO. What the
 * two functions below open is checked on the open file itself (see readOwnedFile): a regular file
 * of the build's user, which it could read anyway.
 */

/**
 * Reads one of the selected files (a report). A symlink is followed only to a file inside the
 * workspace; what is opened must be a regular file of `user` (any owner when the build runs as the
 * service) no larger than `maxBytes`.
 */
export async function readSelectedFile(files: ResolvedFiles, rel: string, opts: { user?: BuildUser; maxBytes: number }): Promise<Buffer> {
  return readOwnedFile(await selectedPath(files, rel), { owner: fileOwner(opts.user), maxBytes: opts.maxBytes, name: rel });
}

/**
 * Opens one of the selected files with the checks of readSelectedFile, for a reader of its own (the
 * JUnit parsing thread reads the descriptor). The caller closes the handle.
 */
export async function openSelectedFile(files: ResolvedFiles, rel: string, opts: { user?: BuildUser } = {}): Promise<{ file: FileHandle; size: number }> {
  return openOwnedFile(await selectedPath(files, rel), { owner: fileOwner(opts.user), name: rel });
}

async function selectedPath(files: ResolvedFiles, rel: string): Promise<string> {
  const real = await realpath(join(files.base, rel));
  if (!isInside(files.workspace, real)) throw new FileSelectionError(`${rel} leads to ${real}, outside the workspace; it is not read`);
  return real;
}

/**
 * Lays the selected files out under their artifact names in `dir`, a directory of the service's that
 * the build cannot write, for the artifact store to pack from there rather than from the workspace.
 * Each is hard-linked, not copied: link(2) does not follow a symlink, and what it made, in our
 * directory, is checked. A file must still be a regular file of `user` (any owner when the build runs
 * as the service), never a FIFO for the packer to block on, nor a symlink swapped in. A symlink kept
 * as a link (enable-symlinks) is linked itself, and its text checked again on our copy.
 * A symlink stored as its content (the default): the regular file it leads to now is linked, if that
 * is inside the workspace. One leading to a directory is refused, not expanded (its files would be
 * stored twice, and outside what the patterns matched). One leading to nothing has no content: it is
 * kept as a link if that stays inside the artifact (it may name a file the artifact holds), else refused.
 * The build's processes are stopped before this runs (runBuildspecJob); these checks are for what a
 * process that escaped that could still swap.
 */
export async function stageFiles(files: ResolvedFiles, dir: string, user?: BuildUser, signal?: AbortSignal): Promise<void> {
  const owner = fileOwner(user);
  for (const e of files.entries) {
    signal?.throwIfAborted();
    const to = join(dir, e.name);
    await mkdir(dirname(to), { recursive: true });
    const linked = e.symlink === 'content' ? await linkedFile(files, e) : undefined;
    const mode = linked === undefined ? e.symlink : linked.as;
    const from = linked?.from ?? join(files.base, e.path);
    await link(from, to).catch(async (err: NodeJS.ErrnoException) => {
      // Builds running as the service: a file it may not hard-link (someone else's, under
      // protected_hardlinks) or on another file system is copied, a symlink as a symlink.
      if (user || (err.code !== 'EPERM' && err.code !== 'EXDEV')) throw err;
      const info = await lstat(from);
      if (!info.isFile() && !info.isSymbolicLink()) throw new FileSelectionError(`${e.path} is not a regular file; it is not stored`);
      await cp(from, to, { verbatimSymlinks: true, preserveTimestamps: true });
    });
    const info = await lstat(to);
    if (info.isSymbolicLink()) {
      if (mode !== 'link') throw new FileSelectionError(`${e.path} is a symlink now; it is not stored`);
      const text = await readlink(to);
      if (withinArtifact(e.name, text) === undefined) throw new FileSelectionError(`${e.path} is now a symlink to ${text}, which leaves the artifact; it is not stored`);
      continue;
    }
    if (mode === 'link') throw new FileSelectionError(`${e.path} is not a symlink any more; it is not stored`);
    if (!info.isFile()) throw new FileSelectionError(`${e.path} ${mode === 'content' ? 'no longer leads to' : 'is not'} a regular file${mode === 'content' ? '' : ' any more'}; it is not stored`);
    if (owner !== undefined && info.uid !== owner) {
      throw new FileSelectionError(`${e.path} now leads to a file of uid ${info.uid}, not of the build's user (uid ${owner}); it is not stored`);
    }
  }
}

/**
 * What to stage for a symlink stored as its content: the real path of the regular file it leads to
 * now, if that is inside the workspace; or the link itself, when it leads to nothing and stays inside
 * the artifact. Refuses, naming it, one that leads out of the workspace, to a directory, or elsewhere.
 */
async function linkedFile(files: ResolvedFiles, e: { path: string; name: string }): Promise<{ from: string; as: 'content' | 'link' }> {
  const abs = join(files.base, e.path);
  const real = await realpath(abs).catch(() => undefined);
  if (real === undefined) {
    const text = await readlink(abs).catch(() => {
      throw new FileSelectionError(`${e.path} is not a symlink any more; it is not stored`);
    });
    if (withinArtifact(e.name, text) !== undefined) return { from: abs, as: 'link' };
    throw new FileSelectionError(`${e.path} is a symlink to ${text}, which does not exist: there is no file to store, and as a link it would not lead into the artifact; remove it or list it in exclude-paths`);
  }
  if (!isInside(files.workspace, real)) throw new FileSelectionError(`${e.path} now leads to ${real}, outside the workspace; it is not stored`);
  const info = await lstat(real);
  const shown = relative(files.workspace, real) || '.';
  if (info.isDirectory()) {
    throw new FileSelectionError(
      `${e.path} is a symlink to the directory ${shown}: an artifact holds files; select the directory's files by its own path, set enable-symlinks: yes to keep the link, or list it in exclude-paths`,
    );
  }
  if (!info.isFile()) throw new FileSelectionError(`${e.path} is a symlink to ${shown}, which is not a regular file; it is not stored`);
  return { from: real, as: 'content' };
}
