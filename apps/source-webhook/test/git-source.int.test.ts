import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { FsArtifactStore } from '@conveyor/artifacts';
import { GitSourceRepository } from '../src/adapters/git-source-repository.js';

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
});
