import { execFile, spawn } from 'node:child_process';
import { chown, link, lstat, mkdir, mkdtemp, readdir, readFile, readlink, rm, stat, symlink, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ArtifactContentError, ArtifactCorruptError, artifactKey, ArtifactTooLargeError, FsArtifactStore, SMALL_ARTIFACT_BYTES } from './fs-artifact-store.js';

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

/** Everything a stream gives before it ends or fails, and how it ended. */
async function drain(stream: NodeJS.ReadableStream): Promise<{ bytes: Buffer; error?: Error }> {
  const chunks: Buffer[] = [];
  try {
    for await (const chunk of stream) chunks.push(chunk as Buffer);
    return { bytes: Buffer.concat(chunks) };
  } catch (err) {
    return { bytes: Buffer.concat(chunks), error: err as Error };
  }
}

describe('FsArtifactStore.open (downloads)', () => {
  it('gives the stored tar, its size, and nothing for an artifact no longer stored', async () => {
    // Large enough to be read in many chunks.
    await writeFile(join(dir, 'src', 'big.bin'), Buffer.alloc(300_000, 7));
    const ref = await store.putFiles(artifactKey('run-download', 'Build', 1), join(dir, 'src'), ['a.txt', 'big.bin']);
    const opened = await store.open(ref);
    expect(opened?.bytes).toBe(ref.bytes);
    const { bytes, error } = await drain(opened!.stream);
    expect(error).toBeUndefined();
    expect(bytes.equals(await readFile(join(dir, 'store', ref.key)))).toBe(true);
    await store.removeRun('run-download');
    expect(await store.open(ref)).toBeUndefined();
  });

  it('refuses at once an artifact of the wrong size, or a small one of the wrong digest, giving out no byte', async () => {
    const ref = await store.putFiles(artifactKey('run-small', 'Build', 1), join(dir, 'src'), ['a.txt']);
    const path = join(dir, 'store', ref.key);
    const content = await readFile(path);
    expect(ref.bytes).toBeLessThanOrEqual(SMALL_ARTIFACT_BYTES);
    content[0] = content[0]! ^ 0xff;
    await writeFile(path, content);
    await expect(store.open(ref)).rejects.toThrow(ArtifactCorruptError);
    await expect(store.open(ref)).rejects.toThrow(/is corrupt: sha256 [0-9a-f]{64} != /);
    await truncate(path, 100);
    await expect(store.open(ref)).rejects.toThrow(`artifact ${ref.key} is corrupt: 100 bytes stored, ${ref.bytes} recorded`);
  });

  it('closes the file when the reader stops early', async () => {
    await writeFile(join(dir, 'src', 'big.bin'), Buffer.alloc(3_000_000, 7));
    const ref = await store.putFiles(artifactKey('run-stop', 'Build', 1), join(dir, 'src'), ['big.bin']);
    const path = join(dir, 'store', ref.key);
    const openOnIt = async () => {
      let n = 0;
      for (const fd of await readdir('/proc/self/fd')) if ((await readlink(`/proc/self/fd/${fd}`).catch(() => '')) === path) n++;
      return n;
    };
    const { stream } = (await store.open(ref))!;
    await new Promise((r) => stream.once('readable', r));
    expect(await openOnIt()).toBe(1);
    stream.destroy();
    for (let i = 0; i < 50 && (await openOnIt()) > 0; i++) await new Promise((r) => setTimeout(r, 10));
    expect(await openOnIt()).toBe(0);
  });

  it('fails a corrupt artifact before its last bytes, so that no reader takes it for whole', async () => {
    // Past SMALL_ARTIFACT_BYTES: checked as it is read.
    await writeFile(join(dir, 'src', 'big.bin'), Buffer.alloc(3_000_000, 7));
    const ref = await store.putFiles(artifactKey('run-bad', 'Build', 1), join(dir, 'src'), ['big.bin']);
    const path = join(dir, 'store', ref.key);
    const content = await readFile(path);
    content[1000] = content[1000]! ^ 0xff;
    await writeFile(path, content);
    const { bytes, error } = await drain((await store.open(ref))!.stream);
    expect(error?.message).toMatch(/^artifact runs\/run-bad\/Build-1\.tar is corrupt: sha256 [0-9a-f]{64} != /);
    expect(bytes.length).toBeLessThan(ref.bytes);
  });
});

describe('FsArtifactStore', () => {
  it('packs the listed files and unpacks them elsewhere, checking the digest', async () => {
    const ref = await store.putFiles(artifactKey('run-1', 'Build', 1), join(dir, 'src'), ['a.txt', 'sub/b.txt']);
    expect(ref).toMatchObject({ key: 'runs/run-1/Build-1.tar', sha256: expect.stringMatching(/^[0-9a-f]{64}$/) });
    await store.extractTo(ref, join(dir, 'out'));
    expect(await readFile(join(dir, 'out', 'sub', 'b.txt'), 'utf8')).toBe('B');
  });

  it.runIf(process.getuid?.() === 0)("as root, gives what it stores to the store's owner when that is another user (Compose: source-webhook reads what build stored)", async () => {
    const owned = join(dir, 'owned');
    await mkdir(owned);
    await chown(owned, 65534, 65534);
    const shared = new FsArtifactStore(owned);
    const ref = await shared.putFiles(artifactKey('run-shared', 'Build', 1), join(dir, 'src'), ['a.txt']);
    for (const path of [join(owned, 'runs'), join(owned, 'runs', 'run-shared'), join(owned, ref.key)]) {
      expect((await lstat(path)).uid, path).toBe(65534);
    }
    // A store root's own keeps its files (the launcher's: one user for every service).
    const mine = await store.putFiles(artifactKey('run-mine', 'Build', 1), join(dir, 'src'), ['a.txt']);
    expect((await lstat(join(dir, 'store', mine.key))).uid).toBe(0);
  });

  it('packs a file whose name starts with @ as a file (node-tar would read it as an archive to include)', async () => {
    await writeFile(join(dir, 'src', '@scope.txt'), 'scoped');
    const ref = await store.putFiles(artifactKey('run-at', 'Build', 1), join(dir, 'src'), ['@scope.txt', 'a.txt']);
    await store.extractTo(ref, join(dir, 'out'));
    expect(await readFile(join(dir, 'out', '@scope.txt'), 'utf8')).toBe('scoped');
    expect(await readFile(join(dir, 'out', 'a.txt'), 'utf8')).toBe('A');
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
    await expect(store.putFiles('k/y.tar', join(dir, 'src'), ['sub/../../outside.txt'])).rejects.toThrow(/outside/);
    // A name that only starts with two dots is inside.
    await writeFile(join(dir, 'src', '..env'), 'E');
    const ref = await store.putFiles('k/x.tar', join(dir, 'src'), ['..env']);
    await store.extractTo(ref, join(dir, 'out-dots'));
    expect(await readFile(join(dir, 'out-dots', '..env'), 'utf8')).toBe('E');
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

/** Every file under `root`, relative: what a refused artifact left behind (nothing, or only directories). */
async function filesUnder(root: string): Promise<string[]> {
  const names = await readdir(root, { recursive: true }).catch(() => [] as string[]);
  const files: string[] = [];
  for (const name of names) if (!(await stat(join(root, name))).isDirectory()) files.push(name);
  return files;
}

describe('FsArtifactStore.putFiles stopped (a cancelled run)', () => {
  it('stores nothing when its signal is already aborted', async () => {
    const put = store.putFiles(artifactKey('run-stopped', 'Build', 1), join(dir, 'src'), ['a.txt'], { signal: AbortSignal.abort('run cancelled') });
    await expect(put).rejects.toBe('run cancelled');
    expect(await filesUnder(join(dir, 'store'))).toEqual([]);
  });

  it('stops packing midway, keeping no partial file', async () => {
    // 256 MiB that take no disk: packing them takes long enough to be stopped while the tar is being written.
    await writeFile(join(dir, 'src', 'big.bin'), '');
    await truncate(join(dir, 'src', 'big.bin'), 256 * 1024 * 1024);
    const stop = new AbortController();
    const put = store.putFiles(artifactKey('run-stopped', 'Build', 1), join(dir, 'src'), ['a.txt', 'big.bin'], { signal: stop.signal });
    const outcome = put.then(
      () => 'stored',
      (err: unknown) => err,
    );
    let written = 0;
    while (written === 0) {
      const files = await filesUnder(join(dir, 'store'));
      for (const f of files) written += (await stat(join(dir, 'store', f)).catch(() => ({ size: 0 }))).size;
      if (written === 0) await new Promise((r) => setTimeout(r, 5));
    }
    stop.abort('run cancelled');
    expect(await outcome).toBe('run cancelled');
    expect(await filesUnder(join(dir, 'store'))).toEqual([]);
  });
});

describe('FsArtifactStore size limit', () => {
  const MiB = 1024 * 1024;

  it('defaults to 2 GiB', () => {
    expect(new FsArtifactStore(join(dir, 'default')).maxBytes).toBe(2 * 1024 * MiB);
  });

  it('refuses a build artifact past ARTIFACT_MAX_BYTES, a sparse file counted as tar stores it (expanded), leaving no partial file', async () => {
    const limited = new FsArtifactStore(join(dir, 'limited'), { maxBytes: MiB });
    // 1 GiB that takes no disk: tar stores it whole.
    await writeFile(join(dir, 'src', 'big.bin'), '');
    await truncate(join(dir, 'src', 'big.bin'), 1024 * MiB);
    const put = limited.putFiles(artifactKey('run-big', 'Build', 1), join(dir, 'src'), ['a.txt', 'big.bin']);
    await expect(put).rejects.toThrow(ArtifactTooLargeError);
    await expect(put).rejects.toThrow('artifact is larger than ARTIFACT_MAX_BYTES (1048576 bytes, 1 MiB)');
    expect(await filesUnder(join(dir, 'limited'))).toEqual([]);
    // Under the limit, the same store stores.
    const ref = await limited.putFiles(artifactKey('run-small', 'Build', 1), join(dir, 'src'), ['a.txt']);
    expect(ref.bytes).toBeLessThanOrEqual(MiB);
  });

  it('counts the tar as it is written: headers that take it past the limit refuse it too', async () => {
    // 64 files of 1 KiB with 200-character names: 1.5 KiB of content and plain headers each, plus 1 KiB of PAX header for the long name.
    const names: string[] = [];
    for (let i = 0; i < 64; i++) {
      const name = `${String(i).padStart(3, '0')}-${'n'.repeat(196)}`;
      await writeFile(join(dir, 'src', name), Buffer.alloc(1024, 1));
      names.push(name);
    }
    const limited = new FsArtifactStore(join(dir, 'limited'), { maxBytes: 64 * 1536 + 1024 + 16 * 1024 });
    await expect(limited.putFiles('k/long-names.tar', join(dir, 'src'), names)).rejects.toThrow(/artifact is larger than ARTIFACT_MAX_BYTES \(115712 bytes/);
    expect(await filesUnder(join(dir, 'limited'))).toEqual([]);
  });

  it('putTar stops copying past the limit, without reading the rest (a source that never ends)', async () => {
    const limited = new FsArtifactStore(join(dir, 'limited'), { maxBytes: MiB });
    const fifo = join(dir, 'endless.tar');
    await exec('mkfifo', [fifo]);
    // Writes zeros for as long as anyone reads.
    const writer = spawn('sh', ['-c', 'exec cat /dev/zero > "$1"', 'sh', fifo], { stdio: 'ignore' });
    try {
      await expect(limited.putTar('k/endless.tar', fifo)).rejects.toThrow('artifact is larger than ARTIFACT_MAX_BYTES (1048576 bytes, 1 MiB)');
      expect(await filesUnder(join(dir, 'limited'))).toEqual([]);
    } finally {
      writer.kill('SIGKILL');
    }
  });

  it('putTar stores a tar within the limit', async () => {
    await writeFile(join(dir, 'ok.tar'), Buffer.alloc(MiB));
    const limited = new FsArtifactStore(join(dir, 'limited'), { maxBytes: MiB });
    expect((await limited.putTar('k/ok.tar', join(dir, 'ok.tar'))).bytes).toBe(MiB);
  });
});
