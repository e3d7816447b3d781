import { spawn } from 'node:child_process';
import { chmod, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { freePortRange, testRedis } from '@conveyor/testing';

const ROOT = join(import.meta.dirname, '..');

/** The README's first command, as a newcomer runs it (with --once so it ends by itself). */
describe('pnpm start', () => {
  let home: string | undefined;
  afterAll(async () => {
    if (home) await rm(home, { recursive: true, force: true });
    await (await testRedis()).stop();
  });

  it('builds, tests, deploys and verifies the example, printing each stage and the URL, then stops everything', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'cv-cli-'));
    home = dir;
    await chmod(dir, 0o755);
    const redis = await testRedis();
    const child = spawn(process.execPath, ['--import', 'tsx', 'packages/launcher/src/cli.ts', 'run-example', '--once'], {
      cwd: ROOT,
      env: { PATH: process.env.PATH, HOME: process.env.HOME, REDIS_URL: redis.url, QUEUE_PREFIX: `cli${Date.now()}`, CONVEYOR_HOME: dir, CONVEYOR_PORT_BASE: String(await freePortRange(5)) },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (out += d));
    const code = await new Promise<number | null>((resolve) => child.once('exit', resolve));
    expect(out, out).toMatch(/✔ Source\s+SUCCEEDED/);
    expect(out).toMatch(/✔ Test\s+SUCCEEDED .*tests: 4 passed, 0 failed/);
    expect(out).toMatch(/✔ Monitor\s+SUCCEEDED .*10 probes, 0 failed/);
    const url = /SUCCEEDED — hello-service is serving at (http:\/\/127\.0\.0\.1:\d+)/.exec(out)?.[1];
    expect(url).toBeDefined();
    expect(out).toContain('Conveyor: stopped.');
    expect(code).toBe(0);
    // --once stopped what it started, the deployment included.
    await expect(fetch(`${url}/healthz`)).rejects.toThrow();
  });

  it('refuses a port base that is not a port, saying which variable is wrong', async () => {
    const child = spawn(process.execPath, ['--import', 'tsx', 'packages/launcher/src/cli.ts', 'serve'], {
      cwd: ROOT,
      env: { PATH: process.env.PATH, HOME: process.env.HOME, CONVEYOR_HOME: join(tmpdir(), 'cv-cli-never-made'), CONVEYOR_PORT_BASE: 'seven' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (out += d));
    expect(await new Promise<number | null>((resolve) => child.once('exit', resolve))).toBe(2);
    expect(out).toContain('CONVEYOR_PORT_BASE must be a port number');
  });
});
