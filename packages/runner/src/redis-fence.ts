import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { isIP } from 'node:net';
import { networkInterfaces } from 'node:os';
import { z } from 'zod';
import { processesOfUsers, processStartTime } from '@conveyor/procfs';

/**
 * REDIS_FENCE: whether a root service that runs pipeline code as users of their own (builds, tests,
 * deployed versions) keeps those users from opening connections to Redis, with a firewall rule.
 * `auto` (default): fenced when iptables can do it, said when not. `require`: the service does not
 * start unless fenced. `off`: left to the host.
 */
export const RedisFenceEnv = {
  REDIS_FENCE: z.enum(['auto', 'require', 'off']).default('auto'),
};

export type RedisFenceMode = z.infer<(typeof RedisFenceEnv)['REDIS_FENCE']>;

/** Marks the rules a service adds: whose they are (service, pid and its start time, so a reused pid is not taken for it). */
const COMMENT = /^conveyor-redis-fence:([a-z-]+):pid=(\d+)(?::start=(\d*))?$/;

type Tool = 'iptables' | 'ip6tables';
/** Runs iptables or ip6tables; rejects with its first line of error output. */
export type Tables = (tool: Tool, args: string[]) => Promise<string>;

/** The real iptables and ip6tables, found on PATH. */
export const runTables: Tables = (tool, args) =>
  new Promise((resolve, reject) =>
    // -w: wait for the host's xtables lock (services starting together change the table at once).
    execFile(tool, ['-w', '30', ...args], { timeout: 60_000 }, (err, stdout, stderr) => {
      if (!err) return resolve(stdout);
      const code = (err as NodeJS.ErrnoException).code;
      const why = code === 'ENOENT' ? `${tool} is not installed` : String(stderr).trim().split('\n')[0] || err.message;
      reject(new Error(why));
    }),
  );

export interface RedisFence {
  /** What the fence refuses, for the start-up log line. */
  readonly summary: string;
  /**
   * Takes the service's rules away, unless something still runs as its users (a build that outlived
   * its kill): then they stay, for the next service to sweep once those processes are gone. Says which.
   */
  remove(): Promise<'removed' | 'kept'>;
}

/** Where the service reaches Redis: its connection's peer, so exactly what ioredis made of REDIS_URL (after DNS). */
export interface RedisPeer {
  address: string;
  port: number;
}

export interface RedisFenceOptions {
  redis: RedisPeer;
  /** The user ids pipeline code runs as: a range of the service's own. */
  uids: readonly [number, number];
  /** Names the service in the rules' comment. */
  service: string;
  /** Default this process's. */
  pid?: number;
  /** Default: the real iptables and ip6tables. */
  tables?: Tables;
  /**
   * Whether a rule is still needed: the process that added it (pid and start time) lives, or something
   * still runs as one of its users (deployed versions outlive their deployer). Default: read from /proc.
   */
  needed?: (owner: { pid: number; start: string }, uids: readonly [number, number]) => boolean;
  /** Whether this host has IPv6 (default: /proc/net/if_inet6 exists). */
  ipv6?: boolean;
}

/**
 * Keeps the users `uids` from opening TCP connections to Redis, with rules at the top of OUTPUT that
 * refuse their SYNs with a reset:
 * - to the address and port the service reaches Redis at, matched as the connection was asked for
 *   (conntrack's original destination), so also when NAT sends it elsewhere (a published container port,
 *   a virtual IP);
 * - when that address is this host's: to that port on every local address, in both families (Redis may
 *   listen on more of them than REDIS_URL names: `::1`, `127.0.0.2`, the host's own address).
 * Each rule names the service, its pid and start time. `remove` takes them away; rules whose service
 * died (or stopped while its users still ran something) are swept by the next service of any kind to
 * start, once no process runs as their users. Needs root and iptables; throws otherwise (and leaves
 * nothing half-made).
 */
export async function fenceOffRedis(opts: RedisFenceOptions): Promise<RedisFence> {
  const tables = opts.tables ?? runTables;
  const needed = opts.needed ?? stillNeeded;
  const pid = opts.pid ?? process.pid;
  const start = (opts.pid === undefined ? processStartTime(pid) : undefined) ?? '';
  const address = unmapped(opts.redis.address);
  const family: Tool = isIP(address) === 6 ? 'ip6tables' : 'iptables';
  const port = String(opts.redis.port);
  const local = isLocal(address);
  const ipv6 = opts.ipv6 ?? existsSync('/proc/net/if_inet6');
  const [first, last] = opts.uids;
  const owners = first === last ? String(first) : `${first}-${last}`;
  const rule = (match: string[]) => [
    ...['-p', 'tcp', '--syn', ...match],
    ...['-m', 'owner', '--uid-owner', owners],
    ...['-m', 'comment', '--comment', `conveyor-redis-fence:${opts.service}:pid=${pid}:start=${start}`],
    ...['-j', 'REJECT', '--reject-with', 'tcp-reset'],
  ];
  const wanted: { tool: Tool; rule: string[] }[] = [{ tool: family, rule: rule(['-m', 'conntrack', '--ctorigdst', address, '--ctorigdstport', port]) }];
  if (local) {
    for (const tool of ['iptables', 'ip6tables'] as const) {
      // A host without IPv6 has no IPv6 address to reach Redis at (ip6tables may not even work there).
      if (tool === 'ip6tables' && !ipv6 && family !== 'ip6tables') continue;
      wanted.push({ tool, rule: rule(['--dport', port, '-m', 'addrtype', '--dst-type', 'LOCAL']) });
    }
  }
  const installed: typeof wanted = [];
  try {
    for (const tool of new Set(wanted.map((w) => w.tool))) await sweep(tables, tool, needed);
    for (const w of wanted) {
      await tables(w.tool, ['-I', 'OUTPUT', '1', ...w.rule]);
      installed.push(w);
    }
  } catch (err) {
    await Promise.all(installed.map(({ tool, rule }) => tables(tool, ['-D', 'OUTPUT', ...rule]).catch(() => undefined)));
    throw err;
  }
  const where = local ? `port ${port} on any address of this host` : `${address} port ${port}, also behind NAT`;
  return {
    summary: `user ids ${owners} cannot open connections to Redis (${where}): firewall rules refuse them`,
    async remove() {
      if (processesOfUsers(first, last).length > 0) return 'kept';
      for (const { tool, rule } of installed.splice(0)) await tables(tool, ['-D', 'OUTPUT', ...rule]).catch(() => undefined);
      return 'removed';
    },
  };
}

/** `::ffff:127.0.0.1` is 127.0.0.1: IPv4 on the wire, seen by iptables, not ip6tables. */
function unmapped(address: string): string {
  const m = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(address);
  return m ? m[1]! : address;
}

function isLocal(address: string): boolean {
  if (address.startsWith('127.') || address === '::1' || address === '0.0.0.0' || address === '::') return true;
  return Object.values(networkInterfaces()).some((list) => (list ?? []).some((i) => i.address === address));
}

/** Removes the fence rules no longer needed (their service gone, and no process running as their users). */
async function sweep(tables: Tables, tool: Tool, needed: NonNullable<RedisFenceOptions['needed']>): Promise<void> {
  const listing = await tables(tool, ['-S', 'OUTPUT']);
  for (const line of listing.split('\n')) {
    const words = line.trim().split(/\s+/).map(unquote);
    if (words[0] !== '-A' || words[1] !== 'OUTPUT') continue;
    const m = COMMENT.exec(words[words.indexOf('--comment') + 1] ?? '');
    const owners = /^(\d+)(?:-(\d+))?$/.exec(words[words.indexOf('--uid-owner') + 1] ?? '');
    if (!m || !owners) continue;
    const first = Number(owners[1]);
    if (needed({ pid: Number(m[2]), start: m[3] ?? '' }, [first, owners[2] === undefined ? first : Number(owners[2])])) continue;
    // Gone already (another service swept it meanwhile) is fine.
    await tables(tool, ['-D', 'OUTPUT', ...words.slice(2)]).catch(() => undefined);
  }
}

function unquote(word: string): string {
  return word.length >= 2 && word.startsWith('"') && word.endsWith('"') ? word.slice(1, -1) : word;
}

function stillNeeded(owner: { pid: number; start: string }, [first, last]: readonly [number, number]): boolean {
  const start = processStartTime(owner.pid);
  const ownerLives = start !== undefined && (owner.start === '' || start === owner.start);
  return ownerLives || processesOfUsers(first, last).length > 0;
}

/** The peer of a connected client (ioredis's `stream`): undefined for a UNIX socket. */
export function redisPeer(redis: { stream?: { remoteAddress?: string; remotePort?: number } }): RedisPeer | undefined {
  const { remoteAddress, remotePort } = redis.stream ?? {};
  return remoteAddress && remotePort ? { address: remoteAddress, port: remotePort } : undefined;
}

export interface RedisGuardOptions {
  /** A connected client of the service's (its peer is where Redis is). */
  redis: { stream?: { remoteAddress?: string; remotePort?: number } };
  mode: RedisFenceMode;
  /** The ids pipeline code runs as; undefined when it runs as the service's own user (which cannot be fenced). */
  uids: readonly [number, number] | undefined;
  service: string;
  /** Whose code it is, for messages ("builds", "deployed versions"). */
  whose: string;
  logger: { info(msg: string): void; warn(msg: string): void };
  /** Whether Redis answers a client that gives no password (service-kit's answersWithoutPassword). */
  answersWithoutPassword: () => Promise<boolean>;
  /** For tests: the fence itself (default fenceOffRedis). */
  fence?: (opts: RedisFenceOptions) => Promise<RedisFence>;
}

/**
 * At a service's start: fences Redis off from the code it runs for pipelines (REDIS_FENCE), and says so,
 * or says why it cannot (`require` makes any reason an error). Either way, warns when Redis answers
 * without a password: the fence refuses their own connections only, and anything on this host that
 * connects where it is told (another Redis, a proxy) could connect for them. Returns what takes the
 * fence down.
 */
export async function guardRedis(opts: RedisGuardOptions): Promise<{ remove(): Promise<unknown> }> {
  const none = { remove: async () => undefined };
  let fence: RedisFence | undefined;
  let why: string | undefined;
  if (opts.mode !== 'off') {
    const peer = redisPeer(opts.redis);
    if (!opts.uids) why = `${opts.whose} run as this service's own user, which a firewall rule cannot keep from Redis without stopping the service too`;
    else if (!peer) why = 'Redis is reached through a UNIX socket (its file permissions are the fence)';
    else {
      try {
        fence = await (opts.fence ?? fenceOffRedis)({ redis: peer, uids: opts.uids, service: opts.service });
        opts.logger.info(`${opts.whose}: ${fence.summary}`);
      } catch (err) {
        why = (err as Error).message;
      }
    }
    if (why && opts.mode === 'require') throw new Error(`REDIS_FENCE=require: Redis cannot be fenced off from ${opts.whose}: ${why}`);
    // Said, not warned: with a password Redis is closed to them anyway (the warning below is the one that matters).
    if (why) opts.logger.info(`Redis is not fenced off from ${opts.whose}: ${why}`);
  }
  if (await opts.answersWithoutPassword()) {
    opts.logger.warn(
      fence
        ? `Redis answers without a password: ${opts.whose} cannot connect to it themselves, but a program on this host that connects where it is told (another Redis, a proxy) could do it for them; give Redis a password (requirepass, or an ACL user) and put it in REDIS_URL`
        : `Redis answers without a password: ${opts.whose} share this host's network and could read and change every run and queue; give Redis a password (requirepass, or an ACL user) and put it in REDIS_URL`,
    );
  }
  return fence ?? none;
}
