import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { isIP } from 'node:net';
import { networkInterfaces } from 'node:os';
import { z } from 'zod';
import { processesOfUsers, processIsOurs, processStartTime } from '@conveyor/procfs';
import { answersWithoutPassword, redisWhereabouts, type Redis, type RedisWhereabouts } from './redis.js';

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
const COMMENT = /^conveyor-redis-fence:([a-z0-9-]+):pid=(\d+):start=(\d*)$/;

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
  /** Rules that could not be added (the others stand): a partial fence. */
  readonly problems: readonly string[];
  /** Why older rules (of services that are gone) could not be swept, if they could not: the fence itself stands. */
  readonly sweepProblem?: string;
  /**
   * Takes the service's rules away, unless something still runs as one of `ids` (default, and whenever
   * this fence took over the rules of a service that is gone: the whole range), such as a build that
   * outlived its kill: then they stay, for a later service to sweep or take over. Throws when a rule
   * could not be removed.
   */
  remove(ids?: readonly number[]): Promise<'removed' | 'kept'>;
}

export interface RedisFenceOptions {
  /** Where Redis is: service-kit's redisWhereabouts of the service's own client. */
  redis: Pick<RedisWhereabouts, 'asked' | 'served'>;
  /** The user ids pipeline code runs as: a range of the service's own. */
  uids: readonly [number, number];
  /** Names the service in the rules' comment. */
  service: string;
  /** Default this process's. */
  pid?: number;
  /** Default: the real iptables and ip6tables. */
  tables?: Tables;
  /** Whether this host has IPv6 (default: /proc/net/if_inet6 exists). */
  ipv6?: boolean;
}

/**
 * Keeps the users `uids` from opening TCP connections to Redis, with rules at the top of OUTPUT that
 * refuse their SYNs with a reset:
 * - to each address the service asks Redis at (its connection's, and every address its host name
 *   resolves to), matched as the connection was asked for (conntrack's original destination: also when
 *   NAT sends it elsewhere) and, for an address not of this host, as sent (connections left untracked);
 * - to where Redis says the connection arrived (after NAT: a container behind a published port);
 * - when any of these is this host's: to that port on every local address, in both families (Redis may
 *   listen on more of them than REDIS_URL names: `::1`, `127.0.0.2`, the host's own address).
 * Each rule names the service, its pid and start time. Rules of services that are gone are swept when
 * another adds its own (see sweep). Needs root and iptables; throws when no rule could be added.
 */
export async function fenceOffRedis(opts: RedisFenceOptions): Promise<RedisFence> {
  const tables = opts.tables ?? runTables;
  const pid = opts.pid ?? process.pid;
  const start = (opts.pid === undefined ? processStartTime(pid) : undefined) ?? '';
  const ipv6 = opts.ipv6 ?? existsSync('/proc/net/if_inet6');
  const [first, last] = opts.uids;
  const owners = first === last ? String(first) : `${first}-${last}`;
  const familyOf = (address: string): Tool => (isIP(address) === 6 ? 'ip6tables' : 'iptables');
  /** What each rule matches, by family (keyed to drop repeats). */
  const matches = new Map<string, { tool: Tool; match: string[] }>();
  const add = (tool: Tool, match: string[]) => matches.set(`${tool} ${match.join(' ')}`, { tool, match });
  const localPorts = new Set<number>();
  for (const peer of opts.redis.asked) {
    const address = unmapped(peer.address);
    // A host without IPv6 cannot reach Redis at an IPv6 address (and ip6tables may not even work there).
    if (!ipv6 && familyOf(address) === 'ip6tables') continue;
    add(familyOf(address), ['-m', 'conntrack', '--ctorigdst', address, '--ctorigdstport', String(peer.port)]);
    if (isLocal(address)) localPorts.add(peer.port);
    else add(familyOf(address), ['-d', address, '--dport', String(peer.port)]);
  }
  const served = opts.redis.served && { ...opts.redis.served, address: unmapped(opts.redis.served.address) };
  if (served && isLocal(served.address)) localPorts.add(served.port);
  else if (served && (ipv6 || familyOf(served.address) === 'iptables')) add(familyOf(served.address), ['-d', served.address, '--dport', String(served.port)]);
  for (const port of localPorts) {
    add('iptables', ['--dport', String(port), '-m', 'addrtype', '--dst-type', 'LOCAL']);
    if (ipv6) add('ip6tables', ['--dport', String(port), '-m', 'addrtype', '--dst-type', 'LOCAL']);
  }
  if (matches.size === 0) throw new Error('where Redis is could not be told: its client had no address');
  const comment = `conveyor-redis-fence:${opts.service}:pid=${pid}:start=${start}`;
  const installed: { tool: Tool; rule: string[] }[] = [];
  const problems: string[] = [];
  let firstError: Error | undefined;
  for (const { tool, match } of matches.values()) {
    const rule = [
      ...['-p', 'tcp', '--syn', ...match],
      ...['-m', 'owner', '--uid-owner', owners],
      ...['-m', 'comment', '--comment', comment],
      ...['-j', 'REJECT', '--reject-with', 'tcp-reset'],
    ];
    try {
      await tables(tool, ['-I', 'OUTPUT', '1', ...rule]);
      installed.push({ tool, rule });
    } catch (err) {
      firstError ??= err instanceof Error ? err : new Error(String(err));
      problems.push(`${tool} ${match.join(' ')}: ${messageOf(err)}`);
    }
  }
  if (installed.length === 0) throw firstError!;
  /** Whether rules of a service that is gone were swept because ours do the same: then its users are ours to watch too. */
  let adopted = false;
  let sweepProblem: string | undefined;
  for (const tool of new Set(installed.map((i) => i.tool))) {
    try {
      adopted = (await sweep(tables, tool, comment)) || adopted;
    } catch (err) {
      sweepProblem = `${tool}: ${messageOf(err)}`;
    }
  }
  const where = [
    ...opts.redis.asked.map((p) => `${unmapped(p.address)}:${p.port}`),
    // Where it arrives, when that is not one of the addresses asked (NAT in between).
    ...(served && !opts.redis.asked.some((p) => unmapped(p.address) === served.address && p.port === served.port) ? [`${served.address}:${served.port} where it arrives`] : []),
    ...[...localPorts].map((port) => `port ${port} on any address of this host`),
  ];
  return {
    summary: `user ids ${owners} cannot open connections to Redis (${[...new Set(where)].join(', ')}): firewall rules refuse them`,
    problems,
    ...(sweepProblem ? { sweepProblem } : {}),
    async remove(ids) {
      // Having taken over a gone service's rules, this fence also stands for whatever of the range it left running.
      const running = ids && !adopted ? ids.some((uid) => processesOfUsers(uid, uid).length > 0) : processesOfUsers(first, last).length > 0;
      if (running) return 'kept';
      const failures: string[] = [];
      for (const { tool, rule } of installed.splice(0)) {
        await tables(tool, ['-D', 'OUTPUT', ...rule]).catch((err: unknown) => failures.push(`${tool}: ${messageOf(err)}`));
      }
      if (failures.length) throw new Error(`Redis fence rules could not be removed: ${failures.join('; ')}`);
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

/**
 * Removes the rules of services that are gone (their pid dead, or reused by a process started later):
 * at once when one of ours (`ownComment`) matches the same (a restarted deployer, whose versions run
 * on: ours take over, and say so by returning true), else once no process runs as their users.
 */
async function sweep(tables: Tables, tool: Tool, ownComment: string): Promise<boolean> {
  let adopted = false;
  const listed = (await tables(tool, ['-S', 'OUTPUT']))
    .split('\n')
    .map((line) => line.trim().split(/\s+/).map(unquote))
    .filter((words) => words[0] === '-A' && words[1] === 'OUTPUT')
    .map((words) => words.slice(2));
  const comment = (words: readonly string[]) => words[words.indexOf('--comment') + 1] ?? '';
  // Compared as iptables lists them (it adds `-m tcp` and spells --syn out), comments left out.
  const ours = new Set(listed.filter((w) => comment(w) === ownComment).map((w) => withoutComment(w).join(' ')));
  for (const words of listed) {
    const m = COMMENT.exec(comment(words));
    const owners = /^(\d+)(?:-(\d+))?$/.exec(words[words.indexOf('--uid-owner') + 1] ?? '');
    if (!m || !owners || comment(words) === ownComment || processIsOurs({ pid: Number(m[2]), ...(m[3] ? { startTime: m[3] } : {}) })) continue;
    const first = Number(owners[1]);
    const last = owners[2] === undefined ? first : Number(owners[2]);
    const running = processesOfUsers(first, last).length > 0;
    const covered = ours.has(withoutComment(words).join(' '));
    if (running && !covered) continue;
    adopted ||= running;
    // Gone already (another service swept it meanwhile) is fine.
    await tables(tool, ['-D', 'OUTPUT', ...words]).catch(() => undefined);
  }
  return adopted;
}

/** A rule's words without its `-m comment --comment <text>`. */
function withoutComment(words: readonly string[]): string[] {
  const i = words.indexOf('--comment');
  return i < 2 || words[i - 2] !== '-m' ? [...words] : [...words.slice(0, i - 2), ...words.slice(i + 2)];
}

function unquote(word: string): string {
  return word.length >= 2 && word.startsWith('"') && word.endsWith('"') ? word.slice(1, -1) : word;
}

function messageOf(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

export interface RedisGuardOptions {
  /** The service's own client (made from REDIS_URL, ready): where it reaches Redis is what is fenced. */
  redis: Redis;
  /** REDIS_URL, to ask whether Redis answers a client that gives no password. */
  redisUrl: string;
  mode: RedisFenceMode;
  /** The user ids pipeline code runs as; undefined when it runs as the service's own user (which cannot be fenced). */
  range: readonly [number, number] | undefined;
  service: string;
  /** Whose code it is, for messages ("builds", "deployed versions"). */
  whose: string;
  logger: { info(msg: string): void; warn(msg: string): void };
  /** For tests: where Redis is, whether it wants a password, and the fence itself. */
  where?: () => Promise<RedisWhereabouts>;
  answersWithoutPassword?: () => Promise<boolean>;
  fence?: (opts: RedisFenceOptions) => Promise<RedisFence>;
}

/** What guardRedis leaves standing: `remove` as RedisFence's, `none` when there was no fence. */
export interface RedisGuard {
  remove(ids?: readonly number[]): Promise<'removed' | 'kept' | 'none'>;
}

/**
 * At a service's start: fences Redis off from the code it runs for pipelines (REDIS_FENCE), and says so,
 * or says why it cannot; `require` makes any reason, and a partial fence, an error. Either way, warns
 * when Redis answers without a password: the fence refuses the pipeline users' own connections, not a
 * program on this host that connects where it is told (another Redis, a proxy).
 */
export async function guardRedis(opts: RedisGuardOptions): Promise<RedisGuard> {
  const none: RedisGuard = { remove: async () => 'none' };
  let fence: RedisFence | undefined;
  let why: string | undefined;
  if (opts.mode !== 'off') {
    try {
      if (!opts.range) {
        why = `${opts.whose} run as this service's own user, which a firewall rule cannot keep from Redis without stopping the service too`;
      } else {
        const where = await (opts.where ?? (() => redisWhereabouts(opts.redis)))();
        if (where.socketPath) why = `Redis is reached through a UNIX socket (${where.socketPath}): its file permissions are the fence`;
        else fence = await (opts.fence ?? fenceOffRedis)({ redis: where, uids: opts.range, service: opts.service });
      }
    } catch (err) {
      why = messageOf(err);
    }
    if (opts.mode === 'require' && fence?.problems.length) {
      const left = await fence.remove().catch(() => 'kept' as const);
      const rules = left === 'kept' ? 'its rules stay until a later service sweeps them' : 'its rules were taken down';
      throw new Error(`REDIS_FENCE=require: the Redis fence for ${opts.whose} is incomplete (${rules}): ${fence.problems.join('; ')}`);
    }
    if (opts.mode === 'require' && why) throw new Error(`REDIS_FENCE=require: Redis cannot be fenced off from ${opts.whose}: ${why}`);
    if (fence) opts.logger.info(`${opts.whose}: ${fence.summary}`);
    if (fence?.problems.length) opts.logger.warn(`the Redis fence for ${opts.whose} is incomplete: ${fence.problems.join('; ')}`);
    if (fence?.sweepProblem) opts.logger.warn(`older Redis fence rules (of services that are gone) could not be swept: ${fence.sweepProblem}`);
    // Said, not warned: with a password Redis is closed to them anyway (the warning below is the one that matters).
    if (why) opts.logger.info(`Redis is not fenced off from ${opts.whose}: ${why}`);
  }
  if (await (opts.answersWithoutPassword ?? (() => answersWithoutPassword(opts.redisUrl)))()) {
    opts.logger.warn(
      fence
        ? `Redis answers without a password: ${opts.whose} are refused connections to it, but a program on this host that connects where it is told (another Redis, a proxy) could connect for them; give Redis a password (requirepass, or an ACL user) and put it in REDIS_URL`
        : `Redis answers without a password: ${opts.whose} share this host's network and could read and change every run and queue; give Redis a password (requirepass, or an ACL user) and put it in REDIS_URL`,
    );
  }
  return fence ?? none;
}
