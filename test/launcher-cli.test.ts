import { spawn, type ChildProcess } from 'node:child_process';
import { chmod, mkdtemp, readdir, readFile, rm, stat } from 'node:fs/promises';
import { createServer } from 'node:net';
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
      env: { PATH: process.env.PATH, HOME: process.env.HOME, REDIS_URL: redis.url, QUEUE_PREFIX: `cli${Date.now()}`, CONVEYOR_HOME: dir, CONVEYOR_PORT_BASE: String(await freePortRange(5)), DEPLOY_UID_CLAIMS_DIR: join(dir, 'uid-claims') },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (out += d));
    const code = await new Promise<number | null>((resolve) => child.once('exit', resolve));
    expect(out, out).toMatch(/✔ Source\s+SUCCEEDED/);
    expect(out).toMatch(/✔ Test\s+SUCCEEDED .*tests: 4 passed, 0 failed/);
    // 11 slots in 10 s, its end included; a probe slower than the interval (a loaded machine) skips a slot.
    const probes = Number(/✔ Monitor\s+SUCCEEDED .*?(\d+) probes, 0 failed/.exec(out)?.[1]);
    expect(probes, out).toBeGreaterThanOrEqual(8);
    expect(probes).toBeLessThanOrEqual(11);
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

  it('refuses ports already in use, naming the port and the service, before starting anything', async () => {
    const base = await freePortRange(5);
    const squatter = createServer();
    await new Promise<void>((r) => squatter.listen(base + 3, '127.0.0.1', () => r()));
    try {
      const { code, out } = await runCli(['serve'], { CONVEYOR_HOME: join(tmpdir(), 'cv-cli-busy'), CONVEYOR_PORT_BASE: String(base) });
      expect(code).toBe(1);
      expect(out).toContain(`port ${base + 3} (for deployer) is in use`);
      expect(out).not.toContain('Ready');
    } finally {
      squatter.close();
    }
  });

  it('serve: makes a new home traversable, refuses a second launcher on it, starts a service that dies again, and a closed terminal (SIGHUP) stops everything', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'cv-cli-serve-'));
    // A home that does not exist yet: made 0755 (builds and versions, as users of their own, reach their
    // directories through it), its logs and temporary files 0700.
    const home = join(dir, 'home');
    const base = await freePortRange(5);
    const redis = await testRedis();
    const child = spawn(process.execPath, ['--import', 'tsx', 'packages/launcher/src/cli.ts', 'serve'], {
      cwd: ROOT,
      env: { PATH: process.env.PATH, HOME: process.env.HOME, REDIS_URL: redis.url, QUEUE_PREFIX: `cliserve${Date.now()}`, CONVEYOR_HOME: home, CONVEYOR_PORT_BASE: String(base), WORKER_CONCURRENCY: '3', DEPLOY_UID_CLAIMS_DIR: join(dir, 'uid-claims') },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (out += d));
    const exited = new Promise<number | null>((resolve) => child.once('exit', resolve));
    try {
      await expect.poll(() => out, { timeout: 60_000, interval: 200 }).toContain('Ready.');
      expect((await stat(home)).mode & 0o777).toBe(0o755);
      for (const sub of ['logs', 'tmp']) expect((await stat(join(home, sub))).mode & 0o777).toBe(0o700);
      // Another launcher on the same home (other ports) would share its deployments, queues and data.
      const second = await runCli(['serve'], { CONVEYOR_HOME: home, CONVEYOR_PORT_BASE: String(await freePortRange(5)), REDIS_URL: redis.url });
      expect(second.code).toBe(1);
      expect(second.out).toContain(`another Conveyor launcher (pid ${child.pid}) uses ${home}`);
      const deployer = await childOf(child.pid!, 'apps/deployer/src/main.ts');
      // A documented setting given to the launcher reaches the services.
      expect((await readFile(`/proc/${deployer}/environ`, 'latin1')).split('\0')).toContain('WORKER_CONCURRENCY=3');
      process.kill(deployer, 'SIGKILL');
      await expect.poll(() => out, { timeout: 60_000, interval: 200 }).toContain('✔ deployer is running again');
      expect(out).toContain('deployer killed by SIGKILL; starting it again');
      expect((await fetch(`http://127.0.0.1:${base + 3}/readyz`)).status).toBe(200);

      child.kill('SIGHUP');
      expect(await exited).toBe(129);
      expect(out).toContain('Conveyor: stopped.');
      for (let i = 0; i < 5; i++) await expect(fetch(`http://127.0.0.1:${base + i}/healthz`)).rejects.toThrow();
    } finally {
      if (child.exitCode === null) child.kill('SIGKILL');
      await rm(dir, { recursive: true, force: true });
    }
  }, 120_000);

  it('Ctrl-C while the services start stops those already started; a launcher killed outright leaves no service running', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'cv-cli-int-'));
    const redis = await testRedis();
    const env = { PATH: process.env.PATH, HOME: process.env.HOME, REDIS_URL: redis.url, QUEUE_PREFIX: `cliint${Date.now()}`, CONVEYOR_HOME: dir, DEPLOY_UID_CLAIMS_DIR: join(dir, 'uid-claims') };
    const start = async () => {
      const child = spawn(process.execPath, ['--import', 'tsx', 'packages/launcher/src/cli.ts', 'serve'], { cwd: ROOT, env: { ...env, CONVEYOR_PORT_BASE: String(await freePortRange(5)) }, stdio: ['ignore', 'pipe', 'pipe'] });
      let out = '';
      child.stdout!.on('data', (d) => (out += d));
      child.stderr!.on('data', (d) => (out += d));
      const exited = new Promise<number | null>((resolve) => child.once('exit', resolve));
      return { child, out: () => out, exited };
    };
    const services = (launcher: number) => servicesOf(launcher);
    try {
      const first = await start();
      // Interrupted once the services are running, before they are all ready.
      await expect.poll(async () => (await services(first.child.pid!)).length, { timeout: 30_000, interval: 50 }).toBe(5);
      const started = await services(first.child.pid!);
      expect(first.out()).not.toContain('Ready.');
      first.child.kill('SIGINT');
      expect(await first.exited).toBe(130);
      expect(first.out()).toContain('interrupted while starting');
      // The home existed, 0700 (as mkdtemp, and every launcher before this one, made it): now traversable.
      expect((await stat(dir)).mode & 0o777).toBe(0o711);
      expect(first.out()).toContain(`made ${dir} traversable`);
      for (const pid of started) expect(await running(pid), `service ${pid}`).toBe(false);

      const second = await start();
      await expect.poll(second.out, { timeout: 60_000, interval: 200 }).toContain('Ready.');
      const orphans = await services(second.child.pid!);
      expect(orphans).toHaveLength(5);
      second.child.kill('SIGKILL');
      // Their stdin, the launcher's pipe, closed: each stops as on SIGTERM.
      await expect.poll(async () => (await Promise.all(orphans.map(running))).filter(Boolean).length, { timeout: 60_000, interval: 200 }).toBe(0);
      // They wrote their own logs, so what they said after the launcher was gone is there.
      expect(await readFile(join(dir, 'logs', 'build.log'), 'utf8')).toContain('the launcher that started this service is gone');
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  }, 180_000);
});

/** Whether `pid` runs (a zombie does not). */
async function running(pid: number): Promise<boolean> {
  const stat = await readFile(`/proc/${pid}/stat`, 'utf8').catch(() => '');
  return stat !== '' && stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
}

/** The pids of `launcher`'s service processes (children running apps/<service>/src/main.ts). */
async function servicesOf(launcher: number): Promise<number[]> {
  const pids: number[] = [];
  for (const name of await readdir('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    const stat = await readFile(`/proc/${name}/stat`, 'utf8').catch(() => '');
    const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
    if (ppid !== launcher) continue;
    if (/apps\/[a-z-]+\/src\/main\.ts/.test(await readFile(`/proc/${name}/cmdline`, 'utf8').catch(() => ''))) pids.push(Number(name));
  }
  return pids;
}

async function runCli(args: string[], env: Record<string, string>): Promise<{ code: number | null; out: string }> {
  const child: ChildProcess = spawn(process.execPath, ['--import', 'tsx', 'packages/launcher/src/cli.ts', ...args], {
    cwd: ROOT,
    env: { PATH: process.env.PATH, HOME: process.env.HOME, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  child.stdout!.on('data', (d) => (out += d));
  child.stderr!.on('data', (d) => (out += d));
  const code = await new Promise<number | null>((resolve) => child.once('exit', resolve));
  return { code, out };
}

/** The pid of `parent`'s child whose command line mentions `script` (Linux /proc). */
async function childOf(parent: number, script: string): Promise<number> {
  for (const name of await readdir('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    const stat = await readFile(`/proc/${name}/stat`, 'utf8').catch(() => '');
    const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
    if (ppid !== parent) continue;
    if ((await readFile(`/proc/${name}/cmdline`, 'utf8').catch(() => '')).includes(script)) return Number(name);
  }
  throw new Error(`no child of ${parent} runs ${script}`);
}
