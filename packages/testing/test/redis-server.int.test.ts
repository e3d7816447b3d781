import { describe, expect, it } from 'vitest';
import { startRedisServer } from '../src/redis-server.js';

describe('startRedisServer', () => {
  it('says how to get Redis when redis-server is not on PATH, instead of crashing', async () => {
    const path = process.env.PATH;
    process.env.PATH = '/nonexistent';
    try {
      await expect(startRedisServer()).rejects.toThrow(/redis-server could not be started \(spawn redis-server ENOENT\): install Redis 7/);
    } finally {
      process.env.PATH = path;
    }
  });

  it('starts one that answers, and stops it', async () => {
    const server = await startRedisServer();
    expect(server.url).toMatch(/^redis:\/\/127\.0\.0\.1:\d+$/);
    await server.stop();
    expect(server.process.exitCode !== null || server.process.signalCode !== null).toBe(true);
  });
});
