import { mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { answersWithoutPassword } from '@conveyor/service-kit';
import { freePort, startRedisServer } from '@conveyor/testing';
import { redactUrl, resolveRedis } from '../src/redis.js';

let dir: string;
let nowhere: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'cv-launch-'));
  nowhere = `redis://127.0.0.1:${await freePort()}`;
});
afterAll(() => rm(dir, { recursive: true, force: true }));

describe('the launcher finds Redis', () => {
  it('without REDIS_URL or a local Redis, starts a private redis-server with AOF under its data directory', async () => {
    const env = { PATH: process.env.PATH };
    const redis = await resolveRedis(env, join(dir, 'redis'), nowhere);
    try {
      expect(redis.origin).toBe('private redis-server');
      // It has a password (in the URL the services get, never on its command line).
      const anonymous = new Redis(redis.url.replace(/\/\/:[^@]*@/, '//'), { lazyConnect: true, maxRetriesPerRequest: 0, enableReadyCheck: false, retryStrategy: () => null });
      anonymous.on('error', () => undefined);
      await expect(anonymous.connect().then(() => anonymous.ping())).rejects.toThrow(/NOAUTH|Authentication/);
      anonymous.disconnect();
      const password = /\/\/:([^@]+)@/.exec(redis.url)?.[1];
      expect(password).toBeTruthy();
      expect(await readFile(`/proc/${redis.process!.pid}/cmdline`, 'utf8')).not.toContain(password);
      expect(redactUrl(redis.url)).not.toContain(password);
      const client = new Redis(redis.url);
      expect(await client.config('GET', 'appendonly')).toEqual(['appendonly', 'yes']);
      expect(await client.config('GET', 'maxmemory-policy')).toEqual(['maxmemory-policy', 'noeviction']);
      expect(await client.config('GET', 'dir')).toEqual(['dir', join(dir, 'redis')]);
      client.disconnect();
      expect((await stat(join(dir, 'redis'))).isDirectory()).toBe(true);
    } finally {
      redis.process?.kill('SIGKILL');
    }
  });

  it('with no redis-server on PATH either, stops saying how to get Redis', async () => {
    await expect(resolveRedis({ PATH: '/nonexistent' }, join(dir, 'r2'), nowhere)).rejects.toThrow(/needs Redis 7[\s\S]*apt-get install redis-server/);
  });

  it('never prints a password', () => {
    expect(redactUrl('redis://user:s3cret@host:6379/0')).toBe('redis://user:***@host:6379/0');
    expect(redactUrl('redis://127.0.0.1:6379')).toBe('redis://127.0.0.1:6379');
  });

  it('the services can tell a Redis anyone may use from one with a password (they warn of the first)', async () => {
    const server = await startRedisServer();
    try {
      expect(await answersWithoutPassword(server.url)).toBe(true);
      const admin = new Redis(server.url);
      await admin.config('SET', 'requirepass', 'a-password-of-the-test-0123');
      expect(await answersWithoutPassword(server.url.replace('redis://', 'redis://:a-password-of-the-test-0123@'))).toBe(false);
      expect(await answersWithoutPassword(server.url)).toBe(false);
      await admin.config('SET', 'requirepass', ''); // so that it can be stopped as it was started
      admin.disconnect();
    } finally {
      await server.stop();
    }
  });
});
