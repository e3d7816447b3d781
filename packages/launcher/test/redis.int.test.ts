import { mkdtemp, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freePort } from '@conveyor/testing';
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
});
