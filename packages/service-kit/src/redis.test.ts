import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freePort } from './net.js';
import { redisWhereabouts } from './redis.js';

/** A private redis-server on a TCP port and a UNIX socket. */
let server: ChildProcess;
let port: number;
let dir: string;
const socket = () => join(dir, 'redis.sock');

beforeAll(async () => {
  port = await freePort();
  dir = await mkdtemp(join(tmpdir(), 'cv-whereabouts-'));
  server = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '::1', '--unixsocket', socket(), '--save', '', '--appendonly', 'no', '--dir', dir], { stdio: 'ignore' });
  // Ready when it answers: commands wait in the offline queue while the client retries.
  const probe = new Redis(port, { retryStrategy: () => 50, maxRetriesPerRequest: null });
  probe.on('error', () => undefined);
  await probe.ping();
  probe.disconnect();
});

afterAll(async () => {
  server.kill('SIGKILL');
  await rm(dir, { recursive: true, force: true });
});

async function whereabouts(url: string) {
  const client = new Redis(url, { maxRetriesPerRequest: null });
  try {
    return await redisWhereabouts(client);
  } finally {
    client.disconnect();
  }
}

describe('redisWhereabouts', () => {
  it('names the address the client is connected to, every address its host name resolves to, and where the server saw it arrive', async () => {
    const where = await whereabouts(`redis://localhost:${port}`);
    expect(where.asked).toContainEqual({ address: '127.0.0.1', port });
    // localhost may also resolve to ::1, which a build could try too.
    for (const peer of where.asked) expect(['127.0.0.1', '::1']).toContain(peer.address);
    expect(where.served).toEqual({ address: '127.0.0.1', port });
    expect(where.socketPath).toBeUndefined();
  });

  it('reads an IPv6 address where the server saw the connection arrive', async () => {
    const where = await whereabouts(`redis://[::1]:${port}`);
    expect(where.asked).toEqual([{ address: '::1', port }]);
    expect(where.served).toEqual({ address: '::1', port });
  });

  it("follows ioredis's reading of the URL (a port given as a query parameter)", async () => {
    const where = await whereabouts(`redis://127.0.0.1/?port=${port}`);
    expect(where.asked).toEqual([{ address: '127.0.0.1', port }]);
  });

  it('says when the client goes through a UNIX socket', async () => {
    const client = new Redis({ path: socket() });
    try {
      expect(await redisWhereabouts(client)).toEqual({ socketPath: socket(), asked: [] });
    } finally {
      client.disconnect();
    }
  });
});
