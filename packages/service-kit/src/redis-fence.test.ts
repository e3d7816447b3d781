import { spawn, spawnSync } from 'node:child_process';
import { createServer, type AddressInfo, type Server } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { fenceOffRedis, guardRedis, runTables, type RedisFence, type RedisFenceOptions, type Tables } from './redis-fence.js';

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

function rules(tool: 'iptables' | 'ip6tables', table = 'filter'): string {
  return spawnSync(tool, ['-w', '5', '-t', table, '-S', 'OUTPUT'], { encoding: 'utf8' }).stdout;
}

/** Firewall commands recorded, not run; `fail` makes matching ones fail. */
function recorder(fail?: (call: string) => boolean): { tables: Tables; calls: string[] } {
  const calls: string[] = [];
  return {
    calls,
    tables: async (tool, args) => {
      const call = `${tool} ${args.join(' ')}`;
      calls.push(call);
      if (fail?.(call)) throw new Error(`${tool}: Permission denied`);
      return args[0] === '-S' ? '-P OUTPUT ACCEPT\n' : '';
    },
  };
}

describe('fenceOffRedis, with its firewall commands recorded', () => {
  const owner = '-m owner --uid-owner 5000-5009 -m comment --comment conveyor-redis-fence:build:pid=42:start= -j REJECT --reject-with tcp-reset';

  it('refuses a remote Redis at its address as asked (so also behind NAT) and as sent (untracked connections), in its own family', async () => {
    const { tables, calls } = recorder();
    const fence = await fenceOffRedis({ redis: { asked: [{ address: '192.0.2.10', port: 6390 }] }, uids: [5000, 5009], service: 'build', pid: 42, tables, ipv6: true });
    expect(calls).toEqual([
      `iptables -I OUTPUT 1 -p tcp --syn -m conntrack --ctorigdst 192.0.2.10 --ctorigdstport 6390 ${owner}`,
      `iptables -I OUTPUT 1 -p tcp --syn -d 192.0.2.10 --dport 6390 ${owner}`,
      'iptables -S OUTPUT',
    ]);
    expect(fence.summary).toMatch(/5000-5009 cannot open connections to Redis \(192\.0\.2\.10:6390\)/);
    expect(fence.problems).toEqual([]);
  });

  it('every address the name resolves to, and where Redis says the connection arrived (a container behind a published port)', async () => {
    const { tables, calls } = recorder();
    await fenceOffRedis({
      redis: { asked: [{ address: '192.0.2.10', port: 6379 }, { address: '2001:db8::10', port: 6379 }], served: { address: '172.17.0.2', port: 6379 } },
      uids: [5000, 5009],
      service: 'build',
      pid: 42,
      tables,
      ipv6: true,
    });
    expect(calls.filter((c) => c.includes(' -I ')).map((c) => c.split(' -m owner')[0])).toEqual([
      'iptables -I OUTPUT 1 -p tcp --syn -m conntrack --ctorigdst 192.0.2.10 --ctorigdstport 6379',
      'iptables -I OUTPUT 1 -p tcp --syn -d 192.0.2.10 --dport 6379',
      'ip6tables -I OUTPUT 1 -p tcp --syn -m conntrack --ctorigdst 2001:db8::10 --ctorigdstport 6379',
      'ip6tables -I OUTPUT 1 -p tcp --syn -d 2001:db8::10 --dport 6379',
      'iptables -I OUTPUT 1 -p tcp --syn -d 172.17.0.2 --dport 6379',
    ]);
  });

  it('a local Redis on every address of this host too, in both families; a single user id as itself', async () => {
    const { tables, calls } = recorder();
    const fence = await fenceOffRedis({ redis: { asked: [{ address: '127.0.0.1', port: 6379 }] }, uids: [7, 7], service: 'deployer', pid: 1, tables, ipv6: true });
    const inserts = calls.filter((c) => c.includes(' -I '));
    expect(inserts.map((c) => c.split(' -m owner')[0])).toEqual([
      'iptables -I OUTPUT 1 -p tcp --syn -m conntrack --ctorigdst 127.0.0.1 --ctorigdstport 6379',
      'iptables -I OUTPUT 1 -p tcp --syn --dport 6379 -m addrtype --dst-type LOCAL',
      'ip6tables -I OUTPUT 1 -p tcp --syn --dport 6379 -m addrtype --dst-type LOCAL',
    ]);
    for (const c of inserts) expect(c).toContain('-m owner --uid-owner 7 ');
    expect(fence.summary).toMatch(/port 6379 on any address of this host/);
  });

  it('an IPv4-mapped address is IPv4 (on the wire, and to iptables); a host without IPv6 gets no ip6tables rule', async () => {
    const { tables, calls } = recorder();
    const asked = [{ address: '::ffff:127.0.0.1', port: 6379 }, { address: '2001:db8::10', port: 6379 }];
    await fenceOffRedis({ redis: { asked, served: { address: '2001:db8::11', port: 6379 } }, uids: [5000, 5009], service: 'build', pid: 42, tables, ipv6: false });
    expect(calls.filter((c) => c.includes(' -I '))).toEqual([
      `iptables -I OUTPUT 1 -p tcp --syn -m conntrack --ctorigdst 127.0.0.1 --ctorigdstport 6379 ${owner}`,
      `iptables -I OUTPUT 1 -p tcp --syn --dport 6379 -m addrtype --dst-type LOCAL ${owner}`,
    ]);
    expect(calls.some((c) => c.startsWith('ip6tables'))).toBe(false);
  });

  it('keeps the rules that could be added and names the others; none added is an error', async () => {
    const partial = recorder((call) => call.startsWith('ip6tables -I'));
    const fence = await fenceOffRedis({ redis: { asked: [{ address: '127.0.0.1', port: 6379 }] }, uids: [5000, 5009], service: 'build', pid: 42, tables: partial.tables, ipv6: true });
    expect(partial.calls.filter((c) => c.startsWith('iptables -I'))).toHaveLength(2);
    expect(fence.problems).toEqual([expect.stringMatching(/^ip6tables --dport 6379 -m addrtype --dst-type LOCAL: ip6tables: Permission denied$/)]);
    const none = recorder((call) => call.includes(' -I '));
    await expect(fenceOffRedis({ redis: { asked: [{ address: '127.0.0.1', port: 6379 }] }, uids: [5000, 5009], service: 'build', pid: 42, tables: none.tables })).rejects.toThrow(/Permission denied/);
    await expect(fenceOffRedis({ redis: { asked: [] }, uids: [5000, 5009], service: 'build', tables: none.tables })).rejects.toThrow(/could not be told/);
  });

  it('says when iptables is not installed (the real runner, on a PATH without it)', async () => {
    const path = process.env.PATH;
    process.env.PATH = '/nonexistent';
    try {
      await expect(runTables('iptables', ['-S', 'OUTPUT'])).rejects.toThrow('iptables is not installed');
    } finally {
      process.env.PATH = path;
    }
  });
});

describe('guardRedis (REDIS_FENCE)', () => {
  const local = async () => ({ asked: [{ address: '127.0.0.1', port: 6379 }] });
  function setup(fence: (opts: RedisFenceOptions) => Promise<RedisFence>, open = false) {
    const lines: string[] = [];
    const logger = { info: (m: string) => void lines.push(`info ${m}`), warn: (m: string) => void lines.push(`warn ${m}`) };
    // The hooks stand in for the client and REDIS_URL: never used.
    const base = { redis: null as never, redisUrl: 'redis://127.0.0.1:6379', where: local, service: 'build', whose: 'builds', logger, answersWithoutPassword: async () => open, fence };
    return { lines, base };
  }
  let removed = 0;
  const up = async (): Promise<RedisFence> => ({ summary: 'user ids 5-9 cannot open connections to Redis', problems: [], remove: async () => (removed++, 'removed') });
  const partial = async (): Promise<RedisFence> => ({ ...(await up()), problems: ['ip6tables …: not available'] });
  const fails = async (): Promise<RedisFence> => {
    throw new Error('iptables is not installed');
  };

  it('fences and says so; a Redis without a password is still warned of (others on the host could connect for them)', async () => {
    const closed = setup(up);
    await guardRedis({ ...closed.base, mode: 'auto', range: [5, 9] });
    expect(closed.lines).toEqual(['info builds: user ids 5-9 cannot open connections to Redis']);
    const open = setup(up, true);
    await guardRedis({ ...open.base, mode: 'auto', range: [5, 9] });
    expect(open.lines[1]).toMatch(/^warn Redis answers without a password: builds are refused connections to it, but .*could connect for them/);
  });

  it('auto: says why it cannot fence, and warns only when Redis wants no password', async () => {
    const cases = [
      [[5, 9], fails, local, /iptables is not installed/],
      [undefined, up, local, /run as this service's own user/],
      [[5, 9], up, async () => ({ socketPath: '/run/redis.sock', asked: [] }), /UNIX socket \(\/run\/redis\.sock\)/],
      [[5, 9], up, async () => Promise.reject(new Error('redis not ready after 30000 ms')), /not ready/],
    ] as const;
    for (const [range, fence, where, why] of cases) {
      for (const open of [false, true]) {
        const { lines, base } = setup(fence, open);
        const guard = await guardRedis({ ...base, where, mode: 'auto', range });
        expect(await guard.remove()).toBe('none');
        expect(lines[0]).toMatch(/^info Redis is not fenced off from builds: /);
        expect(lines[0]).toMatch(why);
        expect(lines.slice(1)).toEqual(open ? [expect.stringMatching(/^warn .* could read and change every run and queue/)] : []);
      }
    }
  });

  it('a partial fence: auto keeps it and warns; require takes it down and stops the service', async () => {
    const auto = setup(partial);
    const guard = await guardRedis({ ...auto.base, mode: 'auto', range: [5, 9] });
    expect(auto.lines[1]).toMatch(/^warn the Redis fence for builds is incomplete: ip6tables/);
    expect(await guard.remove()).toBe('removed');
    const before = removed;
    await expect(guardRedis({ ...setup(partial).base, mode: 'require', range: [5, 9] })).rejects.toThrow(/REDIS_FENCE=require: the Redis fence for builds is incomplete/);
    expect(removed).toBe(before + 1);
  });

  it('older rules that could not be swept are warned of, and do not make the fence incomplete', async () => {
    const swept = async (): Promise<RedisFence> => ({ ...(await up()), sweepProblem: 'iptables: Resource temporarily unavailable' });
    const { lines, base } = setup(swept);
    await guardRedis({ ...base, mode: 'require', range: [5, 9] });
    expect(lines).toEqual(['info builds: user ids 5-9 cannot open connections to Redis', 'warn older Redis fence rules (of services that are gone) could not be swept: iptables: Resource temporarily unavailable']);
  });

  it('require: any reason not to fence stops the service', async () => {
    await expect(guardRedis({ ...setup(fails).base, mode: 'require', range: [5, 9] })).rejects.toThrow(/REDIS_FENCE=require: .*iptables is not installed/);
    await expect(guardRedis({ ...setup(up).base, mode: 'require', range: undefined })).rejects.toThrow(/REDIS_FENCE=require: .*own user/);
  });

  it('off: never touches the firewall, and still warns of a Redis without a password', async () => {
    let called = false;
    const { lines, base } = setup(async () => ((called = true), up()), true);
    await guardRedis({ ...base, mode: 'off', range: [5, 9] });
    expect(called).toBe(false);
    expect(lines).toEqual([expect.stringMatching(/^warn Redis answers without a password/)]);
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

  /** A process running as `uid` until killed. */
  async function runningAs(uid: number) {
    const child = spawn('setpriv', [`--reuid=${uid}`, `--regid=${uid}`, '--clear-groups', '--', 'sleep', '60'], { stdio: 'ignore' });
    await new Promise((r) => child.once('spawn', r));
    await new Promise((r) => setTimeout(r, 200)); // setpriv has exec'd sleep as the user
    const exited = new Promise((r) => child.once('exit', r));
    return { stop: () => (child.kill('SIGKILL'), exited) };
  }

  it("keeps the range's users from connecting, on IPv4 and IPv6, and lets every other user through until removed", async () => {
    expect(connects(FENCED[0], '127.0.0.1', port)).toBe(true); // the check itself can succeed
    const fence = await fenceOffRedis({ redis: { asked: [{ address: '127.0.0.1', port }] }, uids: FENCED, service: 'test' });
    try {
      expect(connects(FENCED[0], '127.0.0.1', port)).toBe(false);
      expect(connects(FENCED[1], '::1', port)).toBe(false);
      // Any local address, not only the one REDIS_URL names.
      expect(connects(FENCED[0], '127.0.0.2', port)).toBe(false);
      expect(connects(FENCED[1] + 1, '127.0.0.1', port)).toBe(true);
      expect(connects(0, '127.0.0.1', port)).toBe(true);
      expect(rules('iptables')).toContain(`conveyor-redis-fence:test:pid=${process.pid}:start=`);
    } finally {
      expect(await fence.remove()).toBe('removed');
    }
    expect(connects(FENCED[0], '127.0.0.1', port)).toBe(true);
    expect(rules('iptables')).not.toContain(`pid=${process.pid}`);
    expect(rules('ip6tables')).not.toContain(`pid=${process.pid}`);
  });

  it('refuses a Redis reached through NAT at the address the connection asked for', async () => {
    // 192.0.2.77 (a documentation address) leads to the listener here, as a published port or a virtual IP would.
    const nat = ['-p', 'tcp', '-d', '192.0.2.77', '--dport', String(port), '-j', 'DNAT', '--to-destination', `127.0.0.1:${port}`];
    expect(spawnSync('iptables', ['-w', '5', '-t', 'nat', '-A', 'OUTPUT', ...nat]).status).toBe(0);
    try {
      expect(connects(FENCED[0], '192.0.2.77', port)).toBe(true);
      const fence = await fenceOffRedis({ redis: { asked: [{ address: '192.0.2.77', port }] }, uids: FENCED, service: 'test' });
      try {
        expect(connects(FENCED[0], '192.0.2.77', port)).toBe(false);
        expect(connects(FENCED[1] + 1, '192.0.2.77', port)).toBe(true);
      } finally {
        await fence.remove();
      }
    } finally {
      spawnSync('iptables', ['-w', '5', '-t', 'nat', '-D', 'OUTPUT', ...nat]);
    }
    expect(rules('iptables', 'nat')).not.toContain('192.0.2.77');
  });

  it("stays up while its service's users still run something (a build that outlived its kill), and comes down after", async () => {
    const fence = await fenceOffRedis({ redis: { asked: [{ address: '127.0.0.1', port }] }, uids: FENCED, service: 'test' });
    const other = await fenceOffRedis({ redis: { asked: [{ address: '127.0.0.1', port }] }, uids: FENCED, service: 'test2' });
    const survivor = await runningAs(FENCED[0]);
    try {
      expect(await fence.remove()).toBe('kept');
      // Another service's process in the range (a test-runner sharing BUILD_UIDS) is not this one's.
      expect(await other.remove([FENCED[1]])).toBe('removed');
      expect(connects(FENCED[1], '127.0.0.1', port)).toBe(false);
    } finally {
      await survivor.stop();
    }
    expect(await fence.remove()).toBe('removed');
    expect(connects(FENCED[1], '127.0.0.1', port)).toBe(true);
  });

  it("sweeps a dead service's rules once nothing runs as its users, or at once when a new service's rules do the same", async () => {
    const dead = spawnSync('true').pid!;
    const elsewhere = port === 65535 ? port - 1 : port + 1;
    const survivor = await runningAs(FENCED[1]);
    try {
      // Services killed with their fence up: nothing removes their rules...
      await fenceOffRedis({ redis: { asked: [{ address: '127.0.0.1', port }] }, uids: FENCED, service: 'test', pid: dead });
      await fenceOffRedis({ redis: { asked: [{ address: '127.0.0.1', port: elsewhere }] }, uids: FENCED, service: 'old', pid: dead });
      expect(rules('iptables')).toContain(`test:pid=${dead}:`);
      expect(rules('iptables')).toContain(`old:pid=${dead}:`);
      // ...while something still runs as one of their users (deployed versions outlive their deployer), they
      // stay, unless the new service's rules match the same (a restarted deployer: no pile of rules).
      const restarted = await fenceOffRedis({ redis: { asked: [{ address: '127.0.0.1', port }] }, uids: FENCED, service: 'test' });
      expect(rules('iptables')).not.toContain(`test:pid=${dead}:`);
      expect(rules('ip6tables')).not.toContain(`test:pid=${dead}:`);
      expect(rules('iptables')).toContain(`old:pid=${dead}:`);
      expect(connects(FENCED[0], '127.0.0.1', port)).toBe(false);
      // Having taken them over, it stands for what the gone service left running too, not only for its own ids.
      expect(await restarted.remove([FENCED[0]])).toBe('kept');
      await survivor.stop();
      expect(await restarted.remove([FENCED[0]])).toBe('removed');
    } finally {
      await survivor.stop();
    }
    // The next service to start sweeps the rest.
    const next = await fenceOffRedis({ redis: { asked: [{ address: '127.0.0.1', port }] }, uids: FENCED, service: 'test' });
    try {
      expect(rules('iptables')).not.toContain(`pid=${dead}:`);
      expect(rules('ip6tables')).not.toContain(`pid=${dead}:`);
      expect(rules('iptables')).toContain(`pid=${process.pid}:`);
    } finally {
      await next.remove();
    }
    expect(connects(FENCED[0], '127.0.0.1', port)).toBe(true);
  });

  it('a rule whose pid now names another process (a reused pid) is not taken for its service', async () => {
    // A rule left by a service whose pid this process has since been given: same pid, another start time.
    const rule = ['-p', 'tcp', '--syn', '--dport', String(port), '-m', 'owner', '--uid-owner', `${FENCED[0]}-${FENCED[1]}`];
    const comment = ['-m', 'comment', '--comment', `conveyor-redis-fence:test:pid=${process.pid}:start=1`, '-j', 'REJECT', '--reject-with', 'tcp-reset'];
    expect(spawnSync('iptables', ['-w', '5', '-I', 'OUTPUT', '1', ...rule, ...comment]).status).toBe(0);
    const next = await fenceOffRedis({ redis: { asked: [{ address: '127.0.0.1', port }] }, uids: FENCED, service: 'test' });
    try {
      // iptables lists comments quoted: the closing quote ends this one's start time.
      expect(rules('iptables')).not.toContain(`pid=${process.pid}:start=1"`);
      expect(rules('iptables')).toContain(`pid=${process.pid}:start=`);
    } finally {
      await next.remove();
      spawnSync('iptables', ['-w', '5', '-D', 'OUTPUT', ...rule, ...comment]);
    }
    expect(rules('iptables')).not.toContain(`pid=${process.pid}`);
  });
});
