import { execFileSync, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtemp, readdir, readFile, rm, stat } from 'node:fs/promises';
import { createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { FsArtifactStore } from '@conveyor/artifacts';
import { PermanentJobError } from '@conveyor/service-kit';
import { GitSourceRepository } from '../src/adapters/git-source-repository.js';
import { loadEnv } from '../src/env.js';

let dir: string;
let server: Server;
const sockets: Socket[] = [];
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'cv-git-'));
  // A Git host that takes the connection and never answers.
  server = createServer((socket) => void sockets.push(socket));
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
});
afterEach(async () => {
  for (const s of sockets.splice(0)) s.destroy();
  await new Promise((r) => server.close(r));
  await rm(dir, { recursive: true, force: true });
});

describe('GitSourceRepository', () => {
  it('past its timeout ends the whole fetch, remote helper included, and leaves the mirror unlocked', async () => {
    const port = (server.address() as { port: number }).port;
    const repository = `http://127.0.0.1:${port}/stalled.git`;
    const repo = new GitSourceRepository(join(dir, 'cache'), new FsArtifactStore(join(dir, 'artifacts')), 1500);
    await expect(repo.snapshot({ repository, ref: 'main', artifactKey: 'runs/x/Source-1.tar', log: () => undefined })).rejects.toThrow(/timed out/);
    const mirror = join(dir, 'cache', `${createHash('sha256').update(repository).digest('hex').slice(0, 24)}.git`);
    // Nothing of that git still runs (its remote helper would keep the lock), and the next fetch may take the lock.
    expect(spawnSync('pgrep', ['-f', `127.0.0.1:${port}/stalled`]).status).toBe(1);
    expect(spawnSync('flock', ['--nonblock', `${mirror}.flock`, 'true']).status).toBe(0);
  });

  it('stops git archive once a snapshot passes ARTIFACT_MAX_BYTES and fails the stage, storing nothing', async () => {
    // A small repository (one 8 MiB blob of zeros, compressed to kilobytes) whose tree names it 100
    // times: `git archive` writes 800 MiB.
    const origin = join(dir, 'origin.git');
    const git = (args: string[], input?: string) => execFileSync('git', ['-C', origin, ...args], { encoding: 'utf8', ...(input !== undefined ? { input } : {}), env: { ...process.env, GIT_AUTHOR_NAME: 't', GIT_AUTHOR_EMAIL: 't@t', GIT_COMMITTER_NAME: 't', GIT_COMMITTER_EMAIL: 't@t' } }).trim();
    execFileSync('git', ['init', '--quiet', '--bare', origin]);
    const blob = execFileSync('git', ['-C', origin, 'hash-object', '-w', '--stdin'], { input: Buffer.alloc(8 * 1024 * 1024) }).toString().trim();
    const tree = git(['mktree'], Array.from({ length: 100 }, (_, i) => `100644 blob ${blob}\tzeros-${i}.bin\n`).join(''));
    const commit = git(['commit-tree', tree, '-m', 'zeros']);
    git(['update-ref', 'refs/heads/main', commit]);

    const store = new FsArtifactStore(join(dir, 'artifacts'), { maxBytes: 4 * 1024 * 1024 });
    const repo = new GitSourceRepository(join(dir, 'cache'), store);
    const lines: string[] = [];
    const snapshot = repo.snapshot({ repository: origin, ref: 'main', artifactKey: 'runs/big/Source-1.tar', log: (line) => lines.push(line) });
    await expect(snapshot).rejects.toThrow(PermanentJobError);
    await expect(snapshot).rejects.toThrow('source snapshot is larger than ARTIFACT_MAX_BYTES (4194304 bytes, 4 MiB)');
    // Nothing stored, no partial archive left, and no git archive of that commit still running.
    await expect(stat(join(dir, 'artifacts', 'runs', 'big', 'Source-1.tar'))).rejects.toThrow();
    for (const under of ['artifacts', 'cache']) {
      const names = await readdir(join(dir, under), { recursive: true }).catch(() => [] as string[]);
      expect(names.filter((name) => /\.(tar|tmp)$/.test(name))).toEqual([]);
    }
    expect(spawnSync('pgrep', ['-f', `archive.*${commit}`]).status).toBe(1);
    // Within the limit, the same repository snapshots.
    const small = execFileSync('git', ['-C', origin, 'hash-object', '-w', '--stdin'], { input: 'hello\n' }).toString().trim();
    git(['update-ref', 'refs/heads/small', git(['commit-tree', git(['mktree'], `100644 blob ${small}\thello.txt\n`), '-m', 'small'])]);
    const ok = await repo.snapshot({ repository: origin, ref: 'small', artifactKey: 'runs/small/Source-1.tar', log: () => undefined });
    await store.extractTo(ok.artifact, join(dir, 'out'));
    expect(await readFile(join(dir, 'out', 'hello.txt'), 'utf8')).toBe('hello\n');
  });

  it('reads ARTIFACT_MAX_BYTES from the environment: 2 GiB unless set, refused when unusable', () => {
    const token = 'x'.repeat(16);
    expect(loadEnv({ CONVEYOR_API_TOKEN: token }).ARTIFACT_MAX_BYTES).toBe(2 * 1024 ** 3);
    expect(loadEnv({ CONVEYOR_API_TOKEN: token, ARTIFACT_MAX_BYTES: '10485760' }).ARTIFACT_MAX_BYTES).toBe(10 * 1024 * 1024);
    for (const bad of ['2G', '-1', '1024']) expect(() => loadEnv({ CONVEYOR_API_TOKEN: token, ARTIFACT_MAX_BYTES: bad })).toThrow(/ARTIFACT_MAX_BYTES/);
  });
});
