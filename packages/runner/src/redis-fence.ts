import { execFile } from 'node:child_process';
import { lookup } from 'node:dns/promises';
import { isIP } from 'node:net';
import { networkInterfaces } from 'node:os';
import { z } from 'zod';
import { pidAlive, processesOfUsers } from '@conveyor/procfs';

/**
 * REDIS_FENCE: whether a root service that runs pipeline code as users of their own (builds, tests,
 * deployed versions) keeps those users from opening connections to Redis, with a firewall rule.
 * `auto` (default): fenced when iptables can do it, a warning when not. `require`: the service does
 * not start unless fenced. `off`: left to the host (its own firewall, a Redis password).
 */
export const RedisFenceEnv = {
  REDIS_FENCE: z.enum(['auto', 'require', 'off']).default('auto'),
};

export type RedisFenceMode = z.infer<(typeof RedisFenceEnv)['REDIS_FENCE']>;

/** Marks the rules a service adds; the pid says whose they are (rules of services that died are swept, once their users' processes are gone). */
const COMMENT = /^conveyor-redis-fence:([a-z-]+):pid=(\d+)$/;

/** Runs iptables or ip6tables; rejects with its first line of error output. */
export type Tables = (tool: 'iptables' | 'ip6tables', args: string[]) => Promise<string>;

const runTables: Tables = (tool, args) =>
  new Promise((resolve, reject) =>
    // -w: wait for the host's xtables lock (services starting together change the table at once).
    execFile(tool, ['-w', '5', ...args], { timeout: 15_000 }, (err, stdout, stderr) => {
      if (!err) return resolve(stdout);
      const code = (err as NodeJS.ErrnoException).code;
      const why = code === 'ENOENT' ? `${tool} is not installed` : String(stderr).trim().split('\n')[0] || err.message;
      reject(new Error(why));
    }),
  );

export interface RedisFence {
  /** What the fence blocks, for the start-up log line. */
  readonly summary: string;
  /** Takes the service's rules away (on shutdown). */
  remove(): Promise<void>;
}

export interface RedisFenceOptions {
  redisUrl: string;
  /** The user ids pipeline code runs as: a range of the service's own. */
  uids: readonly [number, number];
  /** Names the service in the rules' comment. */
  service: string;
  /** Default this process's. */
  pid?: number;
  /** Default: the real iptables and ip6tables. */
  tables?: Tables;
  /**
   * Whether a rule is still needed: its service (pid) lives, or something still runs as one of its users
   * (deployed versions outlive their deployer). Default: both read from /proc.
   */
  needed?: (pid: number, uids: readonly [number, number]) => boolean;
}

/**
 * Keeps the users `uids` from opening TCP connections to Redis (REDIS_URL's port, on its address, or on
 * every address of this host when Redis is local: it may listen on more of them than the URL names). A
 * build or deployed version could otherwise read and change every run and queue, and any pipeline's
 * secrets, on a Redis without a password. One rule per address family in OUTPUT, first, refusing the
 * connection (a TCP reset), marked with the service and its pid. `remove` takes them away; rules whose
 * service died (or stopped without removing them) are swept at the next start of any service, once no
 * process runs as their users. Needs root and iptables; throws otherwise.
 */
export async function fenceOffRedis(opts: RedisFenceOptions): Promise<RedisFence> {
  const tables = opts.tables ?? runTables;
  const needed = opts.needed ?? stillNeeded;
  const pid = opts.pid ?? process.pid;
  const { host, port } = redisAddress(opts.redisUrl);
  const targets = await destinations(host);
  const [first, last] = opts.uids;
  const owners = first === last ? String(first) : `${first}-${last}`;
  const installed: { tool: 'iptables' | 'ip6tables'; rule: string[] }[] = [];
  try {
    for (const tool of ['iptables', 'ip6tables'] as const) {
      const dst = targets[tool];
      if (!dst) continue;
      await sweepDeadServices(tables, tool, needed);
      for (const match of dst) {
        const rule = [
          ...['-p', 'tcp', '--syn', ...match, '--dport', String(port)],
          ...['-m', 'owner', '--uid-owner', owners],
          ...['-m', 'comment', '--comment', `conveyor-redis-fence:${opts.service}:pid=${pid}`],
          ...['-j', 'REJECT', '--reject-with', 'tcp-reset'],
        ];
        await tables(tool, ['-I', 'OUTPUT', '1', ...rule]);
        installed.push({ tool, rule });
      }
    }
  } catch (err) {
    await Promise.all(installed.map(({ tool, rule }) => tables(tool, ['-D', 'OUTPUT', ...rule]).catch(() => undefined)));
    throw err;
  }
  const where = targets.local ? `any address of this host` : host;
  return {
    summary: `user ids ${owners} cannot connect to Redis (port ${port} on ${where}): a firewall rule refuses them`,
    async remove() {
      for (const { tool, rule } of installed.splice(0)) await tables(tool, ['-D', 'OUTPUT', ...rule]).catch(() => undefined);
    },
  };
}

/** Host and port of a redis:// or rediss:// URL (ioredis's defaults: localhost, 6379). */
export function redisAddress(url: string): { host: string; port: number } {
  const parsed = new URL(url);
  if (parsed.protocol !== 'redis:' && parsed.protocol !== 'rediss:') throw new Error(`REDIS_URL is not a TCP address (${parsed.protocol}): nothing to fence`);
  const host = parsed.hostname.replace(/^\[(.*)\]$/, '$1') || 'localhost';
  return { host, port: parsed.port ? Number(parsed.port) : 6379 };
}

type Match = string[];

/**
 * The destinations to refuse, per family. A Redis on this host is refused on all its addresses
 * (`addrtype LOCAL`, both families: 127.0.0.2 or the host's own address reach a Redis bound to all of
 * them); a remote one on the addresses its name resolves to now.
 */
async function destinations(host: string): Promise<{ iptables?: Match[]; ip6tables?: Match[]; local: boolean }> {
  const addresses = isIP(host) ? [{ address: host, family: isIP(host) }] : await lookup(host, { all: true });
  const own = new Set(Object.values(networkInterfaces()).flatMap((list) => (list ?? []).map((i) => i.address)));
  const isLocal = (a: string) => own.has(a) || a.startsWith('127.') || a === '::1' || a === '0.0.0.0' || a === '::';
  if (addresses.some((a) => isLocal(a.address))) {
    const local: Match[] = [['-m', 'addrtype', '--dst-type', 'LOCAL']];
    return { iptables: local, ip6tables: local, local: true };
  }
  const of = (family: number) => addresses.filter((a) => a.family === family).map((a) => ['-d', a.address]);
  const v4 = of(4);
  const v6 = of(6);
  return { ...(v4.length ? { iptables: v4 } : {}), ...(v6.length ? { ip6tables: v6 } : {}), local: false };
}

/** Removes the fence rules no longer needed (their service gone, and no process running as their users). */
async function sweepDeadServices(tables: Tables, tool: 'iptables' | 'ip6tables', needed: (pid: number, uids: readonly [number, number]) => boolean): Promise<void> {
  const listing = await tables(tool, ['-S', 'OUTPUT']);
  for (const line of listing.split('\n')) {
    const words = line.trim().split(/\s+/).map(unquote);
    if (words[0] !== '-A' || words[1] !== 'OUTPUT') continue;
    const m = COMMENT.exec(words[words.indexOf('--comment') + 1] ?? '');
    const owners = /^(\d+)(?:-(\d+))?$/.exec(words[words.indexOf('--uid-owner') + 1] ?? '');
    if (!m || !owners) continue;
    const first = Number(owners[1]);
    if (needed(Number(m[2]), [first, owners[2] === undefined ? first : Number(owners[2])])) continue;
    // Gone already (another service swept it meanwhile) is fine.
    await tables(tool, ['-D', 'OUTPUT', ...words.slice(2)]).catch(() => undefined);
  }
}

function unquote(word: string): string {
  return word.length >= 2 && word.startsWith('"') && word.endsWith('"') ? word.slice(1, -1) : word;
}

function stillNeeded(pid: number, [first, last]: readonly [number, number]): boolean {
  return pidAlive(pid) || processesOfUsers(first, last).length > 0;
}

export interface RedisGuardOptions {
  redisUrl: string;
  mode: RedisFenceMode;
  /** The ids pipeline code runs as; undefined when it runs as the service's own user (which cannot be fenced). */
  uids: readonly [number, number] | undefined;
  service: string;
  /** Whose code it is, for messages ("builds", "deployed versions"). */
  whose: string;
  logger: { info(msg: string): void; warn(msg: string): void };
  /** Says when Redis answers without a password (service-kit's warnIfRedisOpen): the warning when no fence stands. */
  warnIfOpen: () => Promise<void>;
  /** For tests: the fence itself (default fenceOffRedis). */
  fence?: (opts: RedisFenceOptions) => Promise<RedisFence>;
}

/**
 * At a service's start: fences Redis off from the code it runs for pipelines (REDIS_FENCE), and says so;
 * or says why it cannot, and warns if Redis then answers without a password. `require` makes any reason
 * an error. Returns what takes the fence down.
 */
export async function guardRedis(opts: RedisGuardOptions): Promise<{ remove(): Promise<void> }> {
  const none = { remove: async () => undefined };
  if (opts.mode === 'off') {
    await opts.warnIfOpen();
    return none;
  }
  let why: string;
  if (!opts.uids) {
    why = `${opts.whose} run as this service's own user, which a firewall rule cannot keep from Redis without stopping the service too`;
  } else {
    try {
      const fence = await (opts.fence ?? fenceOffRedis)({ redisUrl: opts.redisUrl, uids: opts.uids, service: opts.service });
      opts.logger.info(`${opts.whose}: ${fence.summary}`);
      return fence;
    } catch (err) {
      why = (err as Error).message;
    }
  }
  if (opts.mode === 'require') throw new Error(`REDIS_FENCE=require: Redis cannot be fenced off from ${opts.whose}: ${why}`);
  // Only a Redis without a password is open to them then: that is worth a warning (warnIfOpen), this is not.
  opts.logger.info(`Redis is not fenced off from ${opts.whose}: ${why}`);
  await opts.warnIfOpen();
  return none;
}
