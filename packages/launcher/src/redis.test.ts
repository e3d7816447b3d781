import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { freePort } from '@conveyor/service-kit';
import { resolveRedis, stopLeftoverRedis } from './redis.js';

const dirs: string[] = [];
const children: ChildProcess[] = [];
afterEach(async () => {
  for (const c of children.splice(0)) c.kill('SIGKILL');
  for (const d of dirs.splice(0)) await rm(d, { recursive: true, force: true });
});

const alive = (pid: number) => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

describe.runIf(process.platform === 'linux')('stopLeftoverRedis', () => {
  it("stops the private redis-server a killed launcher left on its data directory, and nothing else named by its pid file", async () => {
    const dataDir = await mkdtemp(join(tmpdir(), 'cv-redis-left-'));
    dirs.push(dataDir);
    const port = await freePort();
    const server = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--dir', dataDir, '--save', ''], { stdio: 'ignore', detached: true });
    children.push(server);
    await expect.poll(() => import('node:fs/promises').then((fs) => fs.readlink(`/proc/${server.pid}/cwd`).catch(() => '')), { timeout: 5000 }).toBe(dataDir);
    // Another process named by the pid file (a pid given since to someone else): left alone.
    const other = spawn('sleep', ['30'], { stdio: 'ignore' });
    children.push(other);
    await writeFile(join(dataDir, 'redis.pid'), `${other.pid}\n`);
    expect(await stopLeftoverRedis(dataDir)).toBe(false);
    expect(alive(other.pid!)).toBe(true);
    await writeFile(join(dataDir, 'redis.pid'), `${server.pid}\n`);
    // Reached through a symlink (a CONVEYOR_HOME that is one): still found, /proc giving the real path.
    const link = `${dataDir}-link`;
    await symlink(dataDir, link);
    dirs.push(link);
    expect(await stopLeftoverRedis(link)).toBe(true);
    await expect.poll(() => server.exitCode !== null || server.signalCode !== null, { timeout: 5000 }).toBe(true);
    expect(await stopLeftoverRedis(dataDir)).toBe(false);
  }, 30_000);

  it('says why REDIS_URL does not answer: no password given, a wrong one, nothing listening', async () => {
    const port = await freePort();
    const server = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--requirepass', 'right-password'], { stdio: 'ignore', detached: true });
    children.push(server);
    await expect.poll(() => resolveRedis({ REDIS_URL: `redis://:right-password@127.0.0.1:${port}` }, '/nonexistent').then((r) => r.origin, () => 'not yet'), { timeout: 5000 }).toBe('REDIS_URL');
    await expect(resolveRedis({ REDIS_URL: `redis://127.0.0.1:${port}` }, '/nonexistent')).rejects.toThrow(`REDIS_URL=redis://127.0.0.1:${port} does not answer PING: NOAUTH`);
    await expect(resolveRedis({ REDIS_URL: `redis://:wrong@127.0.0.1:${port}` }, '/nonexistent')).rejects.toThrow(/redis:\/\/:\*\*\*@127\.0\.0\.1:\d+ does not answer PING: WRONGPASS/);
    const closed = await freePort();
    await expect(resolveRedis({ REDIS_URL: `redis://127.0.0.1:${closed}` }, '/nonexistent')).rejects.toThrow('ECONNREFUSED');
  }, 30_000);
});
