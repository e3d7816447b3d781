import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmod, mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { freePort, pings } from '@conveyor/service-kit';

export interface ResolvedRedis {
  url: string;
  /** Set when the launcher started its own redis-server. */
  process?: ChildProcess;
  origin: 'REDIS_URL' | 'local 6379' | 'private redis-server';
}

const HOW_TO_GET_REDIS = `Conveyor needs Redis 7 and found none:
  - REDIS_URL is not set,
  - nothing answers on redis://127.0.0.1:6379,
  - and no redis-server is on PATH to start a private one.
Install Redis (Debian/Ubuntu: apt-get install redis-server; macOS: brew install redis) or point REDIS_URL at one.`;

/** The URL without its password, for printing. */
export function redactUrl(url: string): string {
  return url.replace(/\/\/([^:/@]*):[^@/]*@/, '//$1:***@');
}

/** REDIS_URL, else a Redis on 127.0.0.1:6379, else a private redis-server (AOF on, a password of its own) under `dataDir`. */
export async function resolveRedis(env: NodeJS.ProcessEnv, dataDir: string, localUrl = 'redis://127.0.0.1:6379'): Promise<ResolvedRedis> {
  if (env.REDIS_URL) {
    if (!(await pings(env.REDIS_URL))) throw new Error(`REDIS_URL=${redactUrl(env.REDIS_URL)} does not answer PING`);
    return { url: env.REDIS_URL, origin: 'REDIS_URL' };
  }
  if (await pings(localUrl)) return { url: localUrl, origin: 'local 6379' };
  await mkdir(dataDir, { recursive: true, mode: 0o700 });
  await chmod(dataDir, 0o700);
  const port = await freePort();
  // A password of its own (kept with its data, so the AOF's Redis keeps it across starts), given in a
  // config file only its owner reads: on the command line every local user, builds included, would see it.
  const password = await privatePassword(dataDir);
  const config = join(dataDir, 'redis.conf');
  await writeFile(config, `requirepass ${password}\n`, { mode: 0o600 });
  await chmod(config, 0o600);
  const args = [config, '--port', String(port), '--bind', '127.0.0.1', '--dir', dataDir, '--appendonly', 'yes', '--appendfsync', 'everysec', '--maxmemory-policy', 'noeviction', '--logfile', join(dataDir, 'redis.log')];
  // Detached: Ctrl-C must not stop Redis before the services have drained.
  const child = spawn('redis-server', args, { stdio: 'ignore', detached: true, env });
  const failed = await new Promise<Error | undefined>((resolve) => {
    child.once('error', resolve);
    setTimeout(() => resolve(undefined), 100);
  });
  if (failed) throw new Error(HOW_TO_GET_REDIS);
  const url = `redis://:${password}@127.0.0.1:${port}`;
  for (let i = 0; i < 100; i++) {
    if (await pings(url)) return { url, process: child, origin: 'private redis-server' };
    if (child.exitCode !== null) break;
    await new Promise((r) => setTimeout(r, 100));
  }
  child.kill('SIGKILL');
  throw new Error(`the private redis-server did not start; see ${join(dataDir, 'redis.log')}`);
}

/** The private redis-server's password: made once, kept in `<dataDir>/password` (0600). */
async function privatePassword(dataDir: string): Promise<string> {
  const file = join(dataDir, 'password');
  const existing = (await readFile(file, 'utf8').catch(() => '')).trim();
  if (/^[A-Za-z0-9_-]{32,}$/.test(existing)) return existing;
  const password = randomBytes(24).toString('base64url');
  await writeFile(file, `${password}\n`, { mode: 0o600 });
  return password;
}
