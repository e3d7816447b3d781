import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { freePort, freePortRange } from '@conveyor/service-kit';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Redis } from 'ioredis';

export { freePort, freePortRange };

export interface RedisServer {
  url: string;
  port: number;
  process: ChildProcess;
  stop(): Promise<void>;
}

/** Starts a private `redis-server` on a free port (no persistence) and waits until it answers PING. */
export async function startRedisServer(extraArgs: string[] = []): Promise<RedisServer> {
  const port = await freePort();
  const dir = await mkdtemp(join(tmpdir(), 'cv-redis-'));
  const child = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', dir, ...extraArgs], {
    stdio: 'ignore',
  });
  let spawnError: Error | undefined;
  child.once('error', (err) => (spawnError = err));
  const url = `redis://127.0.0.1:${port}`;
  const probe = new Redis(url, { lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null });
  probe.on('error', () => undefined); // refused while the server starts: expected, retried below
  const deadline = Date.now() + 10_000;
  for (;;) {
    try {
      await probe.connect();
      await probe.ping();
      break;
    } catch (err) {
      probe.disconnect();
      if (spawnError) throw new Error(`redis-server could not be started (${spawnError.message}): install Redis 7 so that redis-server is on PATH`);
      if (child.exitCode !== null || Date.now() > deadline) throw new Error(`redis-server did not start: ${String(err)}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }
  probe.disconnect();
  return {
    url,
    port,
    process: child,
    async stop() {
      // Stopping twice is harmless: a killed server has a signalCode, not an exitCode.
      if (child.exitCode === null && child.signalCode === null) {
        const exited = new Promise((r) => child.once('exit', r));
        child.kill('SIGKILL');
        await exited;
      }
      await rm(dir, { recursive: true, force: true });
    },
  };
}

let shared: Promise<{ url: string; stop: () => Promise<void> }> | undefined;
/** `REDIS_URL` when set, otherwise one private redis-server per test file (stop it in afterAll). */
export function testRedis(): Promise<{ url: string; stop: () => Promise<void> }> {
  if (process.env.REDIS_URL) return Promise.resolve({ url: process.env.REDIS_URL, stop: async () => {} });
  shared ??= startRedisServer();
  return shared;
}

let counter = 0;
/** A queue/key prefix unique to this test, so tests sharing a Redis never see each other's keys. */
export function uniquePrefix(label = 't'): string {
  counter += 1;
  return `${label}${process.pid}x${Date.now().toString(36)}x${counter}`;
}
