import { execFile, execFileSync } from 'node:child_process';
import { chmod, chown, lstat, mkdir, mkdtemp, readFile, readlink, realpath, rename, rm, symlink, writeFile } from 'node:fs/promises';
import { promisify } from 'node:util';
import { tmpdir } from 'node:os';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { FsArtifactStore } from '@conveyor/artifacts';
import { GLOB_LIMITS } from '@conveyor/globs';
import { CATASTROPHIC_GLOB, GLOB_VICTIM, writeFiles } from '@conveyor/testing';
import { excludesAllUnder, fileSelection, FileSelectionError, readSelectedFile, resolveFiles, stageFiles, type FileSelection } from './globs.js';
import { checkSetpriv } from './shell-process.js';

const run = promisify(execFile);

const isRoot = process.getuid?.() === 0;
const NOBODY = { uid: 65534, gid: 65534 };
const mkfifo = (path: string) => execFileSync('mkfifo', [path]);

let root: string;
let ws: string;

const TREE = [
  'src/a.ts',
  'src/b.ts',
  'src/nested/c.ts',
  'dist/app.js',
  'dist/.map',
  'dist/lib/util.js',
  'reports/unit.xml',
  'reports/sub/int.xml',
  'node_modules/x/index.js',
  '.env',
];

beforeEach(async () => {
  root = await realpath(await mkdtemp(join(tmpdir(), 'cv-globs-')));
  ws = join(root, 'ws');
  await writeFiles(ws, Object.fromEntries(TREE.map((f) => [f, f])));
  await mkdir(join(root, 'outside'));
  await writeFile(join(root, 'outside', 'secret'), 'secret');
});
afterEach(async () => {
  await rm(root, { recursive: true, force: true });
});

const resolve = (sel: FileSelection) => resolveFiles(ws, sel);

/** resolveFiles run as nobody, in a process of its own: its error as `<name>: <message>`, or its files as JSON. */
async function resolveAsNobody(workspace: string, selection: FileSelection): Promise<string> {
  const script = `import { resolveFiles } from ${JSON.stringify(new URL('./globs.ts', import.meta.url).href)};
const r = await resolveFiles(process.argv[1], JSON.parse(process.argv[2])).then((r) => JSON.stringify(r.files), (e) => \`\${e.name}: \${e.message}\`);
process.stdout.write(r);`;
  const { stdout } = await run(checkSetpriv(), [`--reuid=${NOBODY.uid}`, `--regid=${NOBODY.gid}`, '--clear-groups', '--', process.execPath, '--import', import.meta.resolve('tsx/esm'), '--input-type=module', '-e', script, workspace, JSON.stringify(selection)], { cwd: '/', env: { PATH: '/usr/bin:/bin' } });
  return stdout;
}

async function failure(sel: FileSelection): Promise<string> {
  try {
    await resolve(sel);
  } catch (err) {
    expect(err).toBeInstanceOf(FileSelectionError);
    return (err as Error).message;
  }
  throw new Error('expected resolveFiles to fail');
}

describe('resolveFiles: CodeBuild glob semantics', () => {
  it('**/* selects every file recursively, dot files included, sorted', async () => {
    const r = await resolve({ files: ['**/*'] });
    expect(r.base).toBe(ws);
    expect(r.files).toEqual([...TREE].sort());
  });

  it('dir/* selects the files directly in dir; dir/**/* everything below it', async () => {
    expect((await resolve({ files: ['dist/*'] })).files).toEqual(['dist/.map', 'dist/app.js']);
    expect((await resolve({ files: ['./dist/**/*'] })).files).toEqual(['dist/.map', 'dist/app.js', 'dist/lib/util.js']);
  });

  it('matches files, not directories', async () => {
    expect(await failure({ files: ['dist'] })).toMatch(/no files matched "dist"/);
    expect((await resolve({ files: ['dist'], allowEmpty: true })).files).toEqual([]);
  });

  it('takes literal file paths', async () => {
    expect((await resolve({ files: ['src/nested/c.ts', 'missing.txt'] })).files).toEqual(['src/nested/c.ts']);
  });

  it('base-directory makes paths relative to it', async () => {
    const r = await resolve({ files: ['**/*'], baseDirectory: 'dist' });
    expect(r.base).toBe(join(ws, 'dist'));
    expect(r.files).toEqual(['.map', 'app.js', 'lib/util.js']);
  });

  it('base-directory may be a glob matching one directory', async () => {
    expect((await resolve({ files: ['*.js'], baseDirectory: 'dis*' })).files).toEqual(['app.js']);
    expect(await failure({ files: ['**/*'], baseDirectory: '{src,dist}' })).toMatch(/matches 2 directories \(dist, src\); only one is supported/);
  });

  it('exclude-paths removes matches, relative to the base directory', async () => {
    const r = await resolve({ files: ['**/*'], excludePaths: ['node_modules/**/*', '**/*.xml', '.env'] });
    expect(r.files).toEqual(['dist/.map', 'dist/app.js', 'dist/lib/util.js', 'src/a.ts', 'src/b.ts', 'src/nested/c.ts']);
  });

  it('discard-paths flattens names and refuses collisions', async () => {
    const r = await resolve({ files: ['reports/**/*.xml'], discardPaths: true });
    expect(r.entries).toEqual([
      { path: 'reports/sub/int.xml', name: 'int.xml' },
      { path: 'reports/unit.xml', name: 'unit.xml' },
    ]);
    await writeFile(join(ws, 'reports', 'sub', 'unit.xml'), 'dup');
    expect(await failure({ files: ['reports/**/*.xml'], discardPaths: true, label: 'reports.unit' })).toMatch(
      /^reports\.unit: discard-paths puts both reports\/sub\/unit\.xml and reports\/unit\.xml at unit\.xml$/,
    );
  });

  it('reads buildspec sections through fileSelection', async () => {
    const sel = fileSelection({ files: ['**/*'], 'base-directory': 'src', 'exclude-paths': ['nested/**'], 'discard-paths': false }, 'artifacts');
    expect((await resolve(sel)).files).toEqual(['a.ts', 'b.ts']);
  });
});

describe('resolveFiles: confined to the workspace', () => {
  it('refuses base-directory outside the workspace: .., absolute, or through a symlink', async () => {
    expect(await failure({ files: ['**/*'], baseDirectory: '../outside' })).toMatch(/^artifacts\.base-directory: "\.\.\/outside" must be a relative path inside the workspace/);
    expect(await failure({ files: ['**/*'], baseDirectory: '/etc' })).toMatch(/must be a relative path inside the workspace/);
    await symlink(join(root, 'outside'), join(ws, 'escape'));
    expect(await failure({ files: ['**/*'], baseDirectory: 'escape' })).toMatch(/escape resolves to .*outside, outside the workspace/);
    expect(await failure({ files: ['**/*'], baseDirectory: 'nope' })).toMatch(/nope does not exist/);
  });

  it('refuses patterns that climb out', async () => {
    expect(await failure({ files: ['../outside/secret'] })).toMatch(/must be a relative path inside the workspace/);
    expect(await failure({ files: ['**/*'], excludePaths: ['/abs'] })).toMatch(/exclude-paths/);
  });

  it('refuses a selected symlink whose target is outside, and says how to exclude it', async () => {
    await symlink(join(root, 'outside', 'secret'), join(ws, 'dist', 'leak'));
    expect(await failure({ files: ['dist/*'] })).toMatch(/dist\/leak is a symlink to .*outside\/secret, outside the workspace; remove it or list it in exclude-paths/);
    expect((await resolve({ files: ['dist/*'], excludePaths: ['dist/leak'] })).files).toEqual(['dist/.map', 'dist/app.js']);
  });

  it('refuses a dangling symlink pointing outside, keeps links that stay inside', async () => {
    await symlink('../../outside/nothing-here', join(ws, 'dist', 'dangling'));
    expect(await failure({ files: ['dist/*'] })).toMatch(/dist\/dangling is a symlink/);
    await rm(join(ws, 'dist', 'dangling'));
    await symlink('app.js', join(ws, 'dist', 'alias.js'));
    expect((await resolve({ files: ['dist/*.js'] })).files).toEqual(['dist/alias.js', 'dist/app.js']);
  });

  it('does not descend into symlinked directories, nor start a walk through one that leaves', async () => {
    await symlink(join(root, 'outside'), join(ws, 'outdir'));
    await symlink('src', join(ws, 'srclink'));
    const r = await resolve({ files: ['**/*.ts'] });
    expect(r.files).toEqual(['src/a.ts', 'src/b.ts', 'src/nested/c.ts']);
    expect(await failure({ files: ['outdir/*'] })).toMatch(/outdir resolves to .*outside, outside the workspace/);
  });
});

describe('resolveFiles: what a build may leave in its workspace', () => {
  it('refuses a selected FIFO, as it refuses a symlink leaving the workspace', async () => {
    mkfifo(join(ws, 'reports', 'pipe.xml'));
    expect(await failure({ files: ['reports/*.xml'], label: 'reports.unit' })).toMatch(/^reports\.unit\.files: reports\/pipe\.xml is a FIFO, not a regular file; remove it or list it in exclude-paths$/);
    expect((await resolve({ files: ['reports/*.xml'], excludePaths: ['reports/pipe.xml'] })).files).toEqual(['reports/unit.xml']);
  });

  it('does not skip a directory whose name is not UTF-8: a file under it that is selected is refused, naming it as written', async () => {
    const dir = Buffer.concat([Buffer.from(`${ws}/d`), Buffer.from([0xe9])]);
    await mkdir(dir);
    await writeFile(Buffer.concat([dir, Buffer.from('/keep.txt')]), 'kept');
    expect(await failure({ files: ['**/*'] })).toBe(
      'artifacts.files: d\\xe9/keep.txt has a name that is not UTF-8 (the bytes shown as \\xNN); Conveyor stores and reads files by names that are text, so it cannot be selected: rename it, or list it in exclude-paths',
    );
    // Left out on purpose, it is no problem; nor when no pattern selects it.
    expect((await resolve({ files: ['**/*'], excludePaths: ['d?/**'] })).files).toEqual([...TREE].sort());
    expect((await resolve({ files: ['src/**/*'] })).files).toEqual(['src/a.ts', 'src/b.ts', 'src/nested/c.ts']);
  });

  it('refuses a selected file whose name is not UTF-8, naming it, rather than listing a name that stageFiles then cannot find', async () => {
    await writeFile(Buffer.concat([Buffer.from(`${ws}/dist/caf`), Buffer.from([0xe9]), Buffer.from('.txt')]), 'latin-1 name');
    await writeFile(join(ws, 'dist', 'naïve.txt'), 'utf-8 name');
    expect(await failure({ files: ['dist/**/*'], label: 'reports.unit' })).toMatch(/^reports\.unit\.files: dist\/caf\\xe9\.txt has a name that is not UTF-8 /);
    const ok = await resolve({ files: ['dist/**/*'], excludePaths: ['dist/caf?.txt'] });
    expect(ok.files).toEqual(['dist/.map', 'dist/app.js', 'dist/lib/util.js', 'dist/naïve.txt']);
    const staging = join(root, 'staging');
    await mkdir(staging);
    await stageFiles(ok, staging);
    expect(await readFile(join(staging, 'dist', 'naïve.txt'), 'utf8')).toBe('utf-8 name');
  });

  it('fails, naming it, on a directory it cannot list (EACCES) instead of leaving its files out', async () => {
    await writeFiles(join(ws, 'locked'), { 'inside.txt': 'x' });
    await chmod(join(ws, 'locked'), 0o000);
    await chmod(root, 0o755);
    const selection = { files: ['**/*'], label: 'artifacts' };
    // Root lists any directory: the walk runs as nobody then, in a process of its own (a service not run as root, as its builds).
    const message = isRoot ? await resolveAsNobody(ws, selection) : `FileSelectionError: ${await failure(selection)}`;
    expect(message).toBe('FileSelectionError: artifacts.files: locked cannot be listed (EACCES), so the files selected could not all be found; if none of its files are wanted, list it in exclude-paths (locked/**)');
    // Listed in exclude-paths, whatever it holds is left out: the rest is selected.
    const excluded = { ...selection, excludePaths: ['locked/**'] };
    const files = JSON.parse(isRoot ? await resolveAsNobody(ws, excluded) : JSON.stringify((await resolve(excluded)).files)) as string[];
    expect(files).toEqual([...TREE].sort());
    // Excluding only some of what it may hold is not enough.
    const partly = { ...selection, excludePaths: ['locked/*.txt'] };
    expect(isRoot ? await resolveAsNobody(ws, partly) : `FileSelectionError: ${await failure(partly)}`).toMatch(/locked cannot be listed \(EACCES\)/);
  });

  it('takes a directory it cannot list as excluded only when exclude-paths leave out everything under it, read from the patterns', () => {
    for (const patterns of [['**'], ['locked/**'], ['**/locked/**'], ['lo*/**'], ['other/**', 'locked/**']]) {
      expect(excludesAllUnder('locked', patterns), patterns.join(' ')).toBe(true);
    }
    // The hint's escaped form of a name with glob characters.
    expect(excludesAllUnder('locked/[1]', ['locked/\\[1\\]/**'])).toBe(true);
    expect(excludesAllUnder('a/locked', ['a/**'])).toBe(true);
    for (const patterns of [['locked/*'], ['locked/*', 'locked/*/*'], ['locked/**/*.log'], ['locked/**', '!locked/keep.log'], ['!**/*.jar'], ['locked/**/!(*.jar)'], ['@(locked)/**'], ['locked/'], ['other/**']]) {
      expect(excludesAllUnder('locked', patterns), patterns.join(' ')).toBe(false);
    }
  });

  it('refuses a workspace the build replaced with a symlink (it owns the directory around it)', async () => {
    await rename(ws, `${ws}.old`);
    await symlink(join(root, 'outside'), ws);
    expect(await failure({ files: ['secret'] })).toMatch(/^artifacts: the workspace .*ws was replaced by a symlink; nothing is read from it$/);
  });
});

/** The longest the event loop went without a turn while `work` ran (what lock renewals and /healthz wait for). */
async function stallDuring<T>(work: () => Promise<T>): Promise<{ value: T; stallMs: number }> {
  const delay = monitorEventLoopDelay({ resolution: 10 });
  delay.enable();
  try {
    const value = await work();
    await new Promise((r) => setTimeout(r, 30)); // a sample after the work, to record a block that lasted to its end
    return { value, stallMs: delay.max / 1e6 };
  } finally {
    delay.disable();
  }
}

/*
 * The globs and the file names are both the build's. Against a name of 45 `a`s, picomatch's regex for
 * this glob backtracks for about 30 s (`a`×120 and ten `*a`: hours), in the service's only JS thread.
 */
describe('resolveFiles: globs are matched within time limits', () => {

  it.each([
    ['files', { files: ['src/*', CATASTROPHIC_GLOB] }, 'artifacts.files[1]'],
    ['exclude-paths', { files: ['**/*'], excludePaths: ['**/*.map', CATASTROPHIC_GLOB] }, 'artifacts.exclude-paths[1]'],
    ['base-directory', { files: ['**/*'], baseDirectory: CATASTROPHIC_GLOB }, 'artifacts.base-directory'],
  ])('a glob in %s that backtracks catastrophically fails naming it, and holds the event loop no longer than its limit', async (_, sel, field) => {
    await writeFiles(ws, { [`${GLOB_VICTIM}/x`]: '' });
    const started = performance.now();
    const { value, stallMs } = await stallDuring(() => failure(sel));
    expect(value).toBe(`${field}: the glob "${CATASTROPHIC_GLOB}" took longer than ${GLOB_LIMITS.perGlobMs / 1000} s to match; simplify it`);
    expect(performance.now() - started).toBeLessThan(GLOB_LIMITS.perGlobMs + 5000);
    expect(stallMs).toBeLessThan(GLOB_LIMITS.perGlobMs + 1500);
  });

  it('refuses, naming it, a glob nested deeper than V8 can safely compile, and accepts ordinary ones', async () => {
    const deep = `${'!('.repeat(33)}a${')'.repeat(33)}`;
    expect(await failure({ files: ['src/*', deep], label: 'reports.unit' })).toBe('reports.unit.files[1]: the glob nests ( and { groups 33 deep, more than the 32 allowed; simplify it');
    expect((await resolve({ files: ['**/*.{js,ts}'], excludePaths: ['node_modules/**', 'src/!(nested)'] })).files).toEqual(['dist/app.js', 'dist/lib/util.js', 'src/nested/c.ts']);
  });
});

/*
 * What a build changes after the listing, from a process it left running: the readers check what
 * they open, not what was listed.
 */
describe('reading and staging the selected files', () => {
  it('readSelectedFile reads through a symlink inside the workspace; refuses, without blocking, a FIFO or a way out swapped in', async () => {
    await symlink('unit.xml', join(ws, 'reports', 'alias.xml'));
    const files = await resolve({ files: ['reports/*.xml'] });
    expect(files.files).toEqual(['reports/alias.xml', 'reports/unit.xml']);
    expect((await readSelectedFile(files, 'reports/alias.xml', { maxBytes: 1000 })).toString()).toBe('reports/unit.xml');
    await expect(readSelectedFile(files, 'reports/unit.xml', { maxBytes: 5 })).rejects.toThrow(/unit\.xml is larger than 5 bytes/);

    await rm(join(ws, 'reports', 'unit.xml'));
    mkfifo(join(ws, 'reports', 'unit.xml'));
    await expect(readSelectedFile(files, 'reports/unit.xml', { maxBytes: 1000 })).rejects.toThrow(/^reports\/unit\.xml is a FIFO, not a regular file; it is not read$/);

    await rm(join(ws, 'reports', 'alias.xml'));
    await symlink(join(root, 'outside', 'secret'), join(ws, 'reports', 'alias.xml'));
    await expect(readSelectedFile(files, 'reports/alias.xml', { maxBytes: 1000 })).rejects.toThrow(/leads to .*outside\/secret, outside the workspace/);

    // A directory on the way swapped for a link to one holding a file of the same name.
    await rename(join(ws, 'reports'), join(ws, 'reports.old'));
    await writeFile(join(root, 'outside', 'unit.xml'), 'outside');
    await symlink(join(root, 'outside'), join(ws, 'reports'));
    await expect(readSelectedFile(files, 'reports/unit.xml', { maxBytes: 1000 })).rejects.toThrow(/outside the workspace/);
  });

  it.runIf(isRoot)('readSelectedFile refuses a file that is not the build user\'s (one its user could not read)', async () => {
    const files = await resolve({ files: ['reports/*.xml'] });
    await expect(readSelectedFile(files, 'reports/unit.xml', { user: NOBODY, maxBytes: 1000 })).rejects.toThrow(/belongs to uid 0, not to the build's user \(uid 65534\)/);
    await chown(join(ws, 'reports', 'unit.xml'), NOBODY.uid, NOBODY.gid);
    expect((await readSelectedFile(files, 'reports/unit.xml', { user: NOBODY, maxBytes: 1000 })).toString()).toBe('reports/unit.xml');
  });

  it('stageFiles lays the files out under their artifact names, links as what they lead to; refuses a FIFO swapped in', async () => {
    await symlink('app.js', join(ws, 'dist', 'alias.js'));
    const files = await resolve({ files: ['dist/**/*.js'], discardPaths: true });
    const appOnly = await resolve({ files: ['dist/app.js'] });
    const staging = join(root, 'staging');
    await mkdir(staging);
    await stageFiles(files, staging);
    expect(await readFile(join(staging, 'util.js'), 'utf8')).toBe('dist/lib/util.js');
    expect((await lstat(join(staging, 'alias.js'))).isFile()).toBe(true);
    expect(await readFile(join(staging, 'alias.js'), 'utf8')).toBe('dist/app.js');

    await rm(staging, { recursive: true });
    await mkdir(staging);
    await rm(join(ws, 'dist', 'app.js'));
    mkfifo(join(ws, 'dist', 'app.js'));
    await expect(stageFiles(files, staging)).rejects.toThrow(/^dist\/alias\.js is a symlink to dist\/app\.js, which is not a regular file; it is not stored$/);
    await rm(staging, { recursive: true });
    await mkdir(staging);
    await expect(stageFiles(appOnly, staging)).rejects.toThrow(/^dist\/app\.js is not a regular file any more; it is not stored$/);
  });

  it.runIf(isRoot)('stageFiles refuses what a directory swapped on the way leads to, if the build\'s user does not own it', async () => {
    for (const f of TREE) await chown(join(ws, f), NOBODY.uid, NOBODY.gid);
    const files = await resolve({ files: ['src/**/*.ts'] });
    const staging = join(root, 'staging');
    await mkdir(staging);
    await stageFiles(files, staging, NOBODY);
    expect((await lstat(join(staging, 'src', 'a.ts'))).uid).toBe(NOBODY.uid);

    await rm(staging, { recursive: true });
    await mkdir(staging);
    await rename(join(ws, 'src'), join(ws, 'src.old'));
    await mkdir(join(root, 'outside', 'nested'));
    for (const f of ['a.ts', 'b.ts', 'nested/c.ts']) await writeFile(join(root, 'outside', f), 'root only');
    await symlink(join(root, 'outside'), join(ws, 'src'));
    await expect(stageFiles(files, staging, NOBODY)).rejects.toThrow(/^src\/a\.ts now leads to a file of uid 0, not of the build's user \(uid 65534\); it is not stored$/);
  });
});

/*
 * CodeBuild's enable-symlinks: by default (no) an artifact holds what a link leads to; with yes, links
 * that stay inside the artifact are kept as links. Either way nothing outside the workspace is read.
 */
describe('symlinks in an artifact', () => {
  /** Resolves, stages and packs the selection as the build stage does, unpacks it elsewhere, and returns where. */
  async function roundTrip(sel: FileSelection): Promise<string> {
    const files = await resolve(sel);
    const staging = join(root, 'staging');
    await mkdir(staging);
    await stageFiles(files, staging);
    const store = new FsArtifactStore(join(root, 'store'));
    const ref = await store.putFiles('k/artifact.tar', staging, files.entries.map((e) => e.name));
    const out = join(root, 'out');
    await store.extractTo(ref, out);
    return out;
  }

  beforeEach(async () => {
    await mkdir(join(ws, 'config'));
    await writeFile(join(ws, 'config', 'prod.json'), '{"env":"prod"}');
  });

  it('by default stores the content of a link into the workspace, relative or absolute, so it survives the workspace', async () => {
    await symlink('../config/prod.json', join(ws, 'dist', 'config.json'));
    await symlink(join(ws, 'config', 'prod.json'), join(ws, 'dist', 'absolute.json'));
    await symlink('lib/util.js', join(ws, 'dist', 'util-alias.js'));
    const out = await roundTrip(fileSelection({ files: ['**/*'], 'base-directory': 'dist' }));
    await rm(ws, { recursive: true });
    for (const [name, content] of [['config.json', '{"env":"prod"}'], ['absolute.json', '{"env":"prod"}'], ['util-alias.js', 'dist/lib/util.js']]) {
      expect((await lstat(join(out, name!))).isFile()).toBe(true);
      expect(await readFile(join(out, name!), 'utf8')).toBe(content);
    }
  });

  it('by default refuses, naming it, a link to a directory, or to nothing that would leave the artifact', async () => {
    const staging = join(root, 'staging');
    const stage = async (sel: FileSelection) => {
      await rm(staging, { recursive: true, force: true });
      await mkdir(staging);
      return stageFiles(await resolve(sel), staging);
    };
    await symlink('../config', join(ws, 'dist', 'config'));
    await expect(stage({ files: ['dist/*'] })).rejects.toThrow(
      /^dist\/config is a symlink to the directory config: an artifact holds files; select the directory's files by its own path, set enable-symlinks: yes to keep the link, or list it in exclude-paths$/,
    );
    await rm(join(ws, 'dist', 'config'));
    await symlink('../missing.js', join(ws, 'dist', 'dangling.js'));
    await expect(stage({ files: ['**/*'], baseDirectory: 'dist' })).rejects.toThrow(
      /^dangling\.js is a symlink to \.\.\/missing\.js, which does not exist: there is no file to store, and as a link it would not lead into the artifact; remove it or list it in exclude-paths$/,
    );
  });

  it('by default keeps a link to nothing as a link when it stays inside the artifact (it may name a file the artifact holds)', async () => {
    await mkdir(join(ws, 'out', 'sub'), { recursive: true });
    await writeFile(join(ws, 'out', 'sub', 'a.txt'), 'built');
    await symlink('a.txt', join(ws, 'out', 'link.txt'));
    const out = await roundTrip({ files: ['out/**/*'], discardPaths: true });
    expect(await readlink(join(out, 'link.txt'))).toBe('a.txt');
    expect(await readFile(join(out, 'link.txt'), 'utf8')).toBe('built');
  });

  it('enable-symlinks: yes keeps a link that stays inside the artifact as a link', async () => {
    await symlink('app.js', join(ws, 'dist', 'alias.js'));
    await symlink('lib', join(ws, 'dist', 'lib-link'));
    const sel = fileSelection({ files: ['**/*'], 'base-directory': 'dist', 'enable-symlinks': true });
    expect(sel.enableSymlinks).toBe(true);
    const out = await roundTrip(sel);
    expect(await readlink(join(out, 'alias.js'))).toBe('app.js');
    expect(await readFile(join(out, 'alias.js'), 'utf8')).toBe('dist/app.js');
    expect(await readlink(join(out, 'lib-link'))).toBe('lib');
  });

  it('enable-symlinks: yes refuses, naming it, a link that leaves the artifact (after base-directory or discard-paths), or an absolute one', async () => {
    await symlink('../config/prod.json', join(ws, 'dist', 'config.json'));
    expect(await failure({ files: ['**/*'], baseDirectory: 'dist', enableSymlinks: true })).toMatch(
      /^artifacts\.files: config\.json is a symlink to \.\.\/config\/prod\.json, which leaves the artifact: enable-symlinks: yes keeps only links to a place inside it; leave enable-symlinks off to store the file, or list it in exclude-paths$/,
    );
    expect((await resolve({ files: ['**/*'], enableSymlinks: true })).files).toContain('dist/config.json');
    await rm(join(ws, 'dist', 'config.json'));
    await symlink('../app.js', join(ws, 'dist', 'lib', 'up.js'));
    expect(await failure({ files: ['dist/**/*'], discardPaths: true, enableSymlinks: true })).toMatch(/^artifacts\.files: dist\/lib\/up\.js is a symlink to \.\.\/app\.js, which leaves the artifact/);
    await rm(join(ws, 'dist', 'lib', 'up.js'));
    await symlink(join(ws, 'dist', 'app.js'), join(ws, 'dist', 'absolute.js'));
    expect(await failure({ files: ['dist/*'], enableSymlinks: true })).toMatch(
      /^artifacts\.files: dist\/absolute\.js is a symlink to the absolute path .*\/ws\/dist\/app\.js, which would not lead into the artifact once unpacked; make it relative, leave enable-symlinks off to store the file, or list it in exclude-paths$/,
    );
  });

  it('refuses a link leaving the workspace whatever enable-symlinks says, and one swapped to leave it after the listing', async () => {
    await symlink(join(root, 'outside', 'secret'), join(ws, 'dist', 'leak'));
    for (const enableSymlinks of [false, true]) {
      expect(await failure({ files: ['dist/*'], enableSymlinks })).toMatch(/^artifacts\.files: dist\/leak is a symlink to .*outside\/secret, outside the workspace; remove it or list it in exclude-paths$/);
    }
    await rm(join(ws, 'dist', 'leak'));
    await symlink('../config/prod.json', join(ws, 'dist', 'config.json'));
    const staging = join(root, 'staging');
    for (const enableSymlinks of [false, true]) {
      const files = await resolve({ files: ['dist/*'], enableSymlinks });
      await rm(join(ws, 'dist', 'config.json'));
      await symlink(join(root, 'outside', 'secret'), join(ws, 'dist', 'config.json'));
      await mkdir(staging);
      await expect(stageFiles(files, staging)).rejects.toThrow(/^dist\/config\.json (now leads to .*outside\/secret, outside the workspace|is now a symlink to .*outside\/secret, which leaves the artifact); it is not stored$/);
      await rm(staging, { recursive: true });
      await rm(join(ws, 'dist', 'config.json'));
      await symlink('../config/prod.json', join(ws, 'dist', 'config.json'));
    }
  });

  it('refuses a file swapped for a link after the listing', async () => {
    const files = await resolve({ files: ['dist/*'] });
    await rm(join(ws, 'dist', 'app.js'));
    await symlink(join(root, 'outside', 'secret'), join(ws, 'dist', 'app.js'));
    const staging = join(root, 'staging');
    await mkdir(staging);
    await expect(stageFiles(files, staging)).rejects.toThrow(/^dist\/app\.js is a symlink now; it is not stored$/);
  });
});
