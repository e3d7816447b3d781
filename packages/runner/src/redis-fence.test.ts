import { spawn, spawnSync } from 'node:child_process';
import { createServer, type AddressInfo, type Server } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { fenceOffRedis, guardRedis, redisAddress, type RedisFenceOptions, type Tables } from './redis-fence.js';

const isRoot = process.getuid?.() === 0;
const hasTables = spawnSync('iptables', ['-w', '5', '-S', 'OUTPUT']).status === 0 && spawnSync('ip6tables', ['-w', '5', '-S', 'OUTPUT']).status === 0;
/** Ids of this test's own, outside the builds' and deployed versions' default ranges. */
const FENCED: [number, number] = [2_000_012_000, 2_000_012_009];

/** Whether `uid` can open a TCP connection to host:port (bash's /dev/tcp, as a build would). */
function connects(uid: number, host: string, port: number): boolean {
  const r = spawnSync('setpriv', [`--reuid=${uid}`, `--regid=${uid}`, '--clear-groups', '--', 'bash', '--noprofile', '--norc', '-c', `exec 3<>/dev/tcp/${host}/${port}`], {
    timeout: 10_000,
    stdio: 'ignore',
  });
  return r.status === 0;
}

function rules(tool: 'iptables' | 'ip6tables'): string {
  return spawnSync(tool, ['-w', '5', '-S', 'OUTPUT'], { encoding: 'utf8' }).stdout;
}

describe('redisAddress', () => {
  it("takes a redis:// or rediss:// URL's host and port, with ioredis's defaults", () => {
    expect(redisAddress('redis://127.0.0.1:6380')).toEqual({ host: '127.0.0.1', port: 6380 });
    expect(redisAddress('rediss://:secret@cache.example:7000/2')).toEqual({ host: 'cache.example', port: 7000 });
    expect(redisAddress('redis://[::1]')).toEqual({ host: '::1', port: 6379 });
  });

  it('refuses what is not a TCP address', () => {
    expect(() => redisAddress('unix:///run/redis.sock')).toThrow(/not a TCP address/);
  });
});

describe('fenceOffRedis, with its firewall commands recorded', () => {
  function recorder(fail?: (args: string[]) => boolean): { tables: Tables; calls: string[] } {
    const calls: string[] = [];
    return {
      calls,
      tables: async (tool, args) => {
        calls.push(`${tool} ${args.join(' ')}`);
        if (fail?.(args)) throw new Error('iptables: Permission denied');
        return args[0] === '-S' ? '-P OUTPUT ACCEPT\n' : '';
      },
    };
  }

  it('refuses a remote Redis on its own address only, in its own family', async () => {
    const { tables, calls } = recorder();
    const fence = await fenceOffRedis({ redisUrl: 'redis://192.0.2.10:6390', uids: [5000, 5009], service: 'build', pid: 42, tables });
    expect(calls).toEqual([
      'iptables -S OUTPUT',
      'iptables -I OUTPUT 1 -p tcp --syn -d 192.0.2.10 --dport 6390 -m owner --uid-owner 5000-5009 -m comment --comment conveyor-redis-fence:build:pid=42 -j REJECT --reject-with tcp-reset',
    ]);
    expect(fence.summary).toMatch(/5000-5009 cannot connect to Redis \(port 6390 on 192\.0\.2\.10\)/);
  });

  it("a local Redis on every address of this host, in both families, and a single user id as itself", async () => {
    const { tables, calls } = recorder();
    const fence = await fenceOffRedis({ redisUrl: 'redis://localhost', uids: [7, 7], service: 'deployer', pid: 1, tables });
    const inserts = calls.filter((c) => c.includes(' -I '));
    expect(inserts).toHaveLength(2);
    for (const c of inserts) expect(c).toContain('-m addrtype --dst-type LOCAL --dport 6379 -m owner --uid-owner 7 ');
    expect(fence.summary).toMatch(/any address of this host/);
  });

  it('takes back what it added when a later rule cannot be added', async () => {
    const { tables, calls } = recorder((args) => args[0] === '-I' && calls.some((c) => c.startsWith('ip6tables -I')));
    await expect(fenceOffRedis({ redisUrl: 'redis://127.0.0.1:6379', uids: [5000, 5009], service: 'build', pid: 42, tables })).rejects.toThrow(/Permission denied/);
    const added = calls.find((c) => c.startsWith('iptables -I'))!;
    expect(calls).toContain(added.replace('-I OUTPUT 1', '-D OUTPUT'));
  });

  it('says when iptables is missing', async () => {
    const tables: Tables = async () => {
      throw new Error('iptables is not installed');
    };
    await expect(fenceOffRedis({ redisUrl: 'redis://127.0.0.1', uids: [5000, 5009], service: 'build', tables })).rejects.toThrow(/not installed/);
  });
});

describe('guardRedis (REDIS_FENCE)', () => {
  function setup(fence: (opts: RedisFenceOptions) => Promise<{ summary: string; remove(): Promise<void> }>) {
    const lines: string[] = [];
    let warned = 0;
    const logger = { info: (m: string) => lines.push(`info ${m}`), warn: (m: string) => lines.push(`warn ${m}`) };
    const base = { redisUrl: 'redis://127.0.0.1:6379', service: 'build', whose: 'builds', logger, warnIfOpen: async () => void warned++, fence };
    return { lines, warned: () => warned, base };
  }
  const up = async () => ({ summary: 'user ids 5-9 cannot connect to Redis', remove: async () => undefined });
  const fails = async () => {
    throw new Error('iptables is not installed');
  };

  it('fences, says so, and has no need to warn of a Redis without a password', async () => {
    const { lines, warned, base } = setup(up);
    await guardRedis({ ...base, mode: 'auto', uids: [5, 9] });
    expect(lines).toEqual(['info builds: user ids 5-9 cannot connect to Redis']);
    expect(warned()).toBe(0);
  });

  it('auto: says why it cannot fence, and leaves the warning to whether Redis wants a password', async () => {
    for (const [uids, fence, why] of [
      [[5, 9], fails, /iptables is not installed/],
      [undefined, up, /run as this service's own user/],
    ] as const) {
      const { lines, warned, base } = setup(fence);
      const guard = await guardRedis({ ...base, mode: 'auto', uids });
      await guard.remove();
      expect(lines).toHaveLength(1);
      expect(lines[0]).toMatch(why);
      expect(lines[0]).toMatch(/^info Redis is not fenced off from builds/);
      expect(warned()).toBe(1);
    }
  });

  it('require: any reason not to fence stops the service', async () => {
    await expect(guardRedis({ ...setup(fails).base, mode: 'require', uids: [5, 9] })).rejects.toThrow(/REDIS_FENCE=require: .*iptables is not installed/);
    await expect(guardRedis({ ...setup(up).base, mode: 'require', uids: undefined })).rejects.toThrow(/REDIS_FENCE=require: .*own user/);
  });

  it('off: never touches the firewall, and still warns of a Redis without a password', async () => {
    let called = false;
    const { warned, base } = setup(async () => ((called = true), up()));
    await guardRedis({ ...base, mode: 'off', uids: [5, 9] });
    expect(called).toBe(false);
    expect(warned()).toBe(1);
  });
});

describe.skipIf(!isRoot || !hasTables)('fenceOffRedis, with the real firewall (root and iptables)', () => {
  let server: Server;
  let port: number;
  beforeAll(async () => {
    // Dual-stack: answers on 127.0.0.1 and ::1, as a Redis bound to both would.
    server = createServer((socket) => socket.end('+PONG\r\n'));
    await new Promise<void>((resolve) => server.listen(0, '::', resolve));
    port = (server.address() as AddressInfo).port;
  });
  afterAll(() => new Promise<void>((resolve) => server.close(() => resolve())));

  it("keeps the range's users from connecting, on IPv4 and IPv6, and lets every other user through until removed", async () => {
    expect(connects(FENCED[0], '127.0.0.1', port)).toBe(true); // the check itself can succeed
    const fence = await fenceOffRedis({ redisUrl: `redis://127.0.0.1:${port}`, uids: FENCED, service: 'test', tables: undefined });
    try {
      expect(connects(FENCED[0], '127.0.0.1', port)).toBe(false);
      expect(connects(FENCED[1], '::1', port)).toBe(false);
      // Any local address, not only the one REDIS_URL names.
      expect(connects(FENCED[0], '127.0.0.2', port)).toBe(false);
      expect(connects(FENCED[1] + 1, '127.0.0.1', port)).toBe(true);
      expect(connects(0, '127.0.0.1', port)).toBe(true);
      expect(rules('iptables')).toContain(`conveyor-redis-fence:test:pid=${process.pid}`);
    } finally {
      await fence.remove();
    }
    expect(connects(FENCED[0], '127.0.0.1', port)).toBe(true);
    expect(rules('iptables')).not.toContain(`pid=${process.pid}`);
    expect(rules('ip6tables')).not.toContain(`pid=${process.pid}`);
  });

  it('sweeps the rules of a service that died, once nothing runs as its users', async () => {
    const dead = spawnSync('true').pid!;
    // A service killed with its fence up: nothing removes its rules...
    await fenceOffRedis({ redisUrl: `redis://127.0.0.1:${port}`, uids: FENCED, service: 'test', pid: dead });
    expect(rules('iptables')).toContain(`pid=${dead}`);
    // ...and while something still runs as one of its users (a deployed version outlives its deployer), they stay.
    const survivor = spawn('setpriv', [`--reuid=${FENCED[1]}`, `--regid=${FENCED[1]}`, '--clear-groups', '--', 'sleep', '60'], { stdio: 'ignore' });
    await new Promise((r) => survivor.once('spawn', r));
    await new Promise((r) => setTimeout(r, 200)); // setpriv has exec'd sleep as the user
    const first = await fenceOffRedis({ redisUrl: `redis://127.0.0.1:${port}`, uids: FENCED, service: 'test' });
    await first.remove();
    expect(rules('iptables')).toContain(`pid=${dead}`);
    expect(connects(FENCED[0], '127.0.0.1', port)).toBe(false);
    survivor.kill('SIGKILL');
    await new Promise((r) => survivor.once('exit', r));
    // The next service to start sweeps them.
    const next = await fenceOffRedis({ redisUrl: `redis://127.0.0.1:${port}`, uids: FENCED, service: 'test' });
    try {
      expect(rules('iptables')).not.toContain(`pid=${dead}`);
      expect(rules('ip6tables')).not.toContain(`pid=${dead}`);
      expect(rules('iptables')).toContain(`pid=${process.pid}`);
    } finally {
      await next.remove();
    }
    expect(connects(FENCED[0], '127.0.0.1', port)).toBe(true);
  });
});
