import { execFile } from 'node:child_process';
import { link, lstat, mkdir, mkdtemp, readFile, readlink, rm, stat, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ArtifactContentError, artifactKey, FsArtifactStore } from './fs-artifact-store.js';

const exec = promisify(execFile);
let dir: string;
let store: FsArtifactStore;

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'cv-art-'));
  store = new FsArtifactStore(join(dir, 'store'));
  await mkdir(join(dir, 'src', 'sub'), { recursive: true });
  await writeFile(join(dir, 'src', 'a.txt'), 'A');
  await writeFile(join(dir, 'src', 'sub', 'b.txt'), 'B');
});
afterEach(() => rm(dir, { recursive: true, force: true }));

describe('FsArtifactStore', () => {
  it('packs the listed files and unpacks them elsewhere, checking the digest', async () => {
    const ref = await store.putFiles(artifactKey('run-1', 'Build', 1), join(dir, 'src'), ['a.txt', 'sub/b.txt']);
    expect(ref).toMatchObject({ key: 'runs/run-1/Build-1.tar', sha256: expect.stringMatching(/^[0-9a-f]{64}$/) });
    await store.extractTo(ref, join(dir, 'out'));
    expect(await readFile(join(dir, 'out', 'sub', 'b.txt'), 'utf8')).toBe('B');
  });

  it('unpacks no setuid or setgid bit (extracted by root, such a file would be root\'s), and keeps the store private', async () => {
    const { chmod } = await import('node:fs/promises');
    await chmod(join(dir, 'src', 'a.txt'), 0o6755);
    const ref = await store.putFiles(artifactKey('run-3', 'Build', 1), join(dir, 'src'), ['a.txt']);
    await store.extractTo(ref, join(dir, 'out'));
    expect((await stat(join(dir, 'out', 'a.txt'))).mode & 0o7777).toBe(0o755);
    expect((await stat(join(dir, 'store'))).mode & 0o777).toBe(0o700);
  });

  it('keys are write-once: a second put keeps the first artifact', async () => {
    const first = await store.putFiles('k/x.tar', join(dir, 'src'), ['a.txt']);
    const second = await store.putFiles('k/x.tar', join(dir, 'src'), ['a.txt', 'sub/b.txt']);
    expect(second).toEqual(first);
  });

  it('refuses an artifact whose bytes changed after it was stored', async () => {
    const ref = await store.putFiles('k/y.tar', join(dir, 'src'), ['a.txt']);
    await expect(store.extractTo({ ...ref, sha256: '0'.repeat(64) }, join(dir, 'out'))).rejects.toThrow(/corrupt/);
  });

  it('refuses keys that leave the store and files outside the directory', async () => {
    await expect(store.putFiles('../escape.tar', join(dir, 'src'), ['a.txt'])).rejects.toThrow(/invalid artifact key/);
    await expect(store.putFiles('k/z.tar', join(dir, 'src'), ['../outside.txt'])).rejects.toThrow(/outside/);
  });

  it('stores a file that is there under several names (hard links) whole under each, without crashing the packer', async () => {
    // The runner stages an artifact's files as hard links: a symlink stored as its content and the
    // file it leads to are one inode. node-tar would write hard-link entries, and (7.5) throw an
    // uncaught "write after end" when the last two of them end the archive.
    const errors: Error[] = [];
    const onError = (err: Error) => errors.push(err);
    process.prependListener('uncaughtException', onError);
    try {
      await link(join(dir, 'src', 'a.txt'), join(dir, 'src', 'a-again.txt'));
      await link(join(dir, 'src', 'sub', 'b.txt'), join(dir, 'src', 'sub', 'b-again.txt'));
      const ref = await store.putFiles('k/hard-links.tar', join(dir, 'src'), ['a.txt', 'a-again.txt', 'sub/b.txt', 'sub/b-again.txt']);
      await new Promise((r) => setTimeout(r, 100));
      expect(errors).toEqual([]);
      const { stdout } = await exec('tar', ['-tvf', join(dir, 'store', 'k', 'hard-links.tar')]);
      expect(stdout.split('\n').filter((l) => l.startsWith('h'))).toEqual([]);
      await store.extractTo(ref, join(dir, 'out'));
      for (const [name, text] of [['a-again.txt', 'A'], ['sub/b-again.txt', 'B']]) {
        expect(await readFile(join(dir, 'out', name!), 'utf8')).toBe(text);
        expect((await stat(join(dir, 'out', name!))).nlink).toBe(1);
      }
    } finally {
      process.removeListener('uncaughtException', onError);
    }
  });

  it('stores relative symlinks as links, never following them', async () => {
    await symlink('sub/b.txt', join(dir, 'src', 'link'));
    const ref = await store.putFiles('k/l.tar', join(dir, 'src'), ['link']);
    await store.extractTo(ref, join(dir, 'out'));
    expect(await readlink(join(dir, 'out', 'link'))).toBe('sub/b.txt');
  });

  it('unpacks links to absolute paths and outside the directory as links, as git checks them out, never writing through them', async () => {
    await symlink('/etc/passwd', join(dir, 'src', 'abs'));
    await symlink('../../../outside', join(dir, 'src', 'sub', 'up'));
    await mkdir(join(dir, 'src', 'deep'));
    await symlink('/tmp', join(dir, 'src', 'deep', 'tmp-link'));
    const ref = await store.putFiles('k/abs.tar', join(dir, 'src'), ['abs', 'sub/b.txt', 'sub/up', 'deep/tmp-link']);
    await store.extractTo(ref, join(dir, 'out'));
    expect(await readlink(join(dir, 'out', 'abs'))).toBe('/etc/passwd');
    expect(await readlink(join(dir, 'out', 'sub', 'up'))).toBe('../../../outside');
    expect(await readlink(join(dir, 'out', 'deep', 'tmp-link'))).toBe('/tmp');
    expect(await readFile(join(dir, 'out', 'sub', 'b.txt'), 'utf8')).toBe('B');
  });

  it('never writes through a link an artifact carries, whatever the order of its entries', async () => {
    const evil = join(dir, 'evil');
    await mkdir(join(evil, 'x'), { recursive: true });
    await writeFile(join(evil, 'x', 'passwd'), 'pwned');
    const victim = join(dir, 'victim');
    await mkdir(victim);
    // A link `x` → victim first, then a file x/passwd: a naive unpacker writes the file into victim.
    await symlink(victim, join(dir, 'x'));
    await exec('tar', ['-cf', join(dir, 'evil.tar'), '-C', dir, 'x']);
    await exec('tar', ['-rf', join(dir, 'evil.tar'), '-C', evil, 'x/passwd']);
    const ref = await store.putTar('k/evil-link.tar', join(dir, 'evil.tar'));
    await expect(store.extractTo(ref, join(dir, 'out'))).rejects.toThrow(ArtifactContentError);
    await expect(stat(join(victim, 'passwd'))).rejects.toThrow();
    expect((await lstat(join(dir, 'out', 'x'))).isDirectory()).toBe(true); // the file went into a real directory
  });

  it('fails once, as content that cannot be unpacked, on a hard link to nothing', async () => {
    const script = "import tarfile,sys\nt=tarfile.open(sys.argv[1],'w')\ni=tarfile.TarInfo('b')\ni.type=tarfile.LNKTYPE\ni.linkname='missing'\nt.addfile(i)\nt.close()\n";
    await exec('python3', ['-c', script, join(dir, 'hard.tar')]);
    const ref = await store.putTar('k/hard.tar', join(dir, 'hard.tar'));
    await expect(store.extractTo(ref, join(dir, 'out'))).rejects.toThrow(ArtifactContentError);
  });

  it('never writes outside the target when a tar carries ../ or absolute paths (zip slip)', async () => {
    const evil = join(dir, 'evil');
    await mkdir(evil);
    await writeFile(join(evil, 'x'), 'pwned');
    await exec('tar', ['-cf', join(dir, 'evil.tar'), '-C', evil, '--transform', 's,^x,../../escaped,', 'x']);
    const ref = await store.putTar('k/evil.tar', join(dir, 'evil.tar'));
    await store.extractTo(ref, join(dir, 'deep', 'out')).catch(() => undefined);
    await expect(stat(join(dir, 'escaped'))).rejects.toThrow();
  });
});
