import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createServer, Socket, type Server } from 'node:net';
import { endianness } from 'node:os';
import { afterEach, describe, expect, it } from 'vitest';
import { parseProcNetAddress, parseTcpTable, processesHoldingSocket, processName, socketInodesOf, tcpListeners } from './sockets.js';

const servers: Server[] = [];
const children: ChildProcess[] = [];
afterEach(async () => {
  for (const s of servers.splice(0)) await new Promise((r) => s.close(r));
  for (const c of children.splice(0)) c.kill('SIGKILL');
});

/** A real listening socket of this process on `host`, port chosen by the kernel. */
async function listen(host: string): Promise<number> {
  const server = createServer((s) => s.end());
  servers.push(server);
  await new Promise<void>((resolve, reject) => server.once('error', reject).listen(0, host, resolve));
  return (server.address() as { port: number }).port;
}

const LE = endianness() === 'LE';

describe('parseProcNetAddress', () => {
  it('reads the host-ordered hex of /proc/net/tcp and tcp6', () => {
    expect(parseProcNetAddress(LE ? '0100007F' : '7F000001')).toBe('127.0.0.1');
    expect(parseProcNetAddress('00000000')).toBe('0.0.0.0');
    expect(parseProcNetAddress('0'.repeat(32))).toBe('::');
    expect(parseProcNetAddress(LE ? '000000000000000000000000' + '01000000' : '0'.repeat(31) + '1')).toBe('::1');
    expect(parseProcNetAddress(LE ? '0000000000000000FFFF00000100007F' : '00000000000000000000FFFF7F000001')).toBe('::ffff:127.0.0.1');
    expect(parseProcNetAddress(LE ? 'B80D0120000000000000000001000000' : '20010DB8000000000000000000000001')).toBe('2001:db8::1');
  });

  it('refuses what is not an address', () => {
    for (const bad of ['', 'zz00007F', '0100007', '0'.repeat(16)]) expect(parseProcNetAddress(bad)).toBeUndefined();
  });
});

describe('parseTcpTable', () => {
  it('keeps the listening sockets only (state 0A), with port, owner and inode', () => {
    const table = [
      '  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode',
      `   0: ${LE ? '0100007F' : '7F000001'}:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 424242 1 0000000000000000 100 0 0 10 0`,
      `   1: ${LE ? '0100007F' : '7F000001'}:9C40 ${LE ? '0100007F' : '7F000001'}:1F90 01 00000000:00000000 00:00000000 00000000  1000        0 434343 1 0000000000000000 20 4 30 10 -1`,
      '',
    ].join('\n');
    expect(parseTcpTable(table, 4)).toEqual([{ family: 4, address: '127.0.0.1', port: 8080, uid: 1000, inode: '424242' }]);
    expect(parseTcpTable('garbage\n  0: x y 0A', 4)).toEqual([]);
  });
});

describe.runIf(process.platform === 'linux')('on Linux, with real sockets', () => {
  it("finds a socket listening on 127.0.0.1, and this process holding it by its inode", async () => {
    const port = await listen('127.0.0.1');
    const found = tcpListeners(port);
    expect(found).toEqual([{ family: 4, address: '127.0.0.1', port, uid: process.getuid!(), inode: expect.stringMatching(/^\d+$/) }]);
    expect(socketInodesOf(process.pid)?.has(found[0]!.inode)).toBe(true);
    expect(processesHoldingSocket(found[0]!.inode, [process.pid])).toEqual([process.pid]);
  });

  it('finds wildcard listeners of both families', async () => {
    const v4 = await listen('0.0.0.0');
    expect(tcpListeners(v4).map((l) => [l.family, l.address])).toEqual([[4, '0.0.0.0']]);
    if (!existsSync('/proc/net/tcp6')) return; // no IPv6 here
    const v6 = await listen('::').catch(() => undefined);
    if (v6 === undefined) return;
    expect(tcpListeners(v6).map((l) => [l.family, l.address])).toEqual([[6, '::']]);
  });

  it('lists nothing for a port nobody listens on, and not a connected socket on it', async () => {
    const port = await listen('127.0.0.1');
    const client = new Socket();
    await new Promise<void>((r) => client.connect(port, '127.0.0.1', r));
    try {
      // Only the listener: neither end of the connection is in state 0A.
      expect(tcpListeners(port)).toHaveLength(1);
      expect(tcpListeners(client.localPort!)).toEqual([]);
    } finally {
      client.destroy();
    }
  });

  it("names another process holding a listener, found by scanning every process's fds", async () => {
    const child = spawn(process.execPath, ['-e', "require('net').createServer().listen(0, '127.0.0.1', function () { console.log(this.address().port) })"], { stdio: ['ignore', 'pipe', 'inherit'] });
    children.push(child);
    const port = Number(await new Promise<string>((r) => child.stdout!.once('data', (d: Buffer) => r(d.toString().trim()))));
    const [listener] = tcpListeners(port);
    expect(listener).toBeDefined();
    expect(socketInodesOf(process.pid)?.has(listener!.inode)).toBe(false);
    expect(processesHoldingSocket(listener!.inode)).toEqual([child.pid]);
    expect(processName(child.pid!)).toBe('node');
  });

  it('cannot read the fds of a process that is gone', () => {
    expect(socketInodesOf(2 ** 22 + 1)).toBeUndefined();
  });
});
