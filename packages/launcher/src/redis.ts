import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmod, mkdir, readFile, readlink, realpath, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { freePort, pingProblem, pings } from '@conveyor/service-kit';

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
    const problem = await pingProblem(env.REDIS_URL);
    if (problem !== undefined) throw new Error(`REDIS_URL=${redactUrl(env.REDIS_URL)} does not answer PING: ${redactUrl(problem)}`);
    return { url: env.REDIS_URL, origin: 'REDIS_URL' };
  }
  if (await pings(localUrl)) return { url: localUrl, origin: 'local 6379' };
  await mkdir(dataDir, { recursive: true, mode: 0o700 });
  await chmod(dataDir, 0o700);
  await stopLeftoverRedis(dataDir);
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
  if (child.pid !== undefined) await writeFile(join(dataDir, 'redis.pid'), `${child.pid}\n`, { mode: 0o600 });
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

/**
 * A private redis-server that a launcher which died without stopping it (SIGKILL) left running on
 * `dataDir`: stopped (SIGTERM: it writes its AOF and exits; SIGKILL after 10 s) before another starts on
 * the same files, which two servers would corrupt. Only a redis-server working in that very directory
 * (it changes to `--dir`) is taken for it: a pid given since to another process is left alone. The caller
 * holds the home's launcher lock, so no live launcher owns it.
 */
export async function stopLeftoverRedis(dataDir: string): Promise<boolean> {
  // /proc shows the real path: a home reached through a symlink must compare as that.
  dataDir = await realpath(dataDir).catch(() => dataDir);
  const pid = Number((await readFile(join(dataDir, 'redis.pid'), 'utf8').catch(() => '')).trim());
  if (!Number.isInteger(pid) || pid <= 1) return false;
  const cwd = await readlink(`/proc/${pid}/cwd`).catch(() => undefined);
  const comm = (await readFile(`/proc/${pid}/comm`, 'utf8').catch(() => '')).trim();
  if (cwd !== dataDir || comm !== 'redis-server') return false;
  const gone = async (ms: number) => {
    for (const deadline = Date.now() + ms; Date.now() < deadline; await new Promise((r) => setTimeout(r, 50))) {
      if ((await readlink(`/proc/${pid}/cwd`).catch(() => undefined)) !== dataDir) return true;
    }
    return false;
  };
  try {
    process.kill(pid, 'SIGTERM');
    if (!(await gone(10_000))) process.kill(pid, 'SIGKILL');
    await gone(5000);
  } catch {
    // gone meanwhile
  }
  return true;
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
