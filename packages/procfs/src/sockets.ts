import { readdirSync, readFileSync, readlinkSync } from 'node:fs';
import { endianness } from 'node:os';

/**
 * Who listens on a TCP port, from Linux's /proc: the listening sockets of /proc/net/tcp and tcp6 (of
 * this process's network namespace), and the processes holding them, found by the socket's inode among
 * the links of /proc/<pid>/fd (`socket:[<inode>]`). Off Linux everything is empty (`procNetAvailable`
 * says so). Reads are synchronous: /proc is in memory.
 */
export interface TcpListener {
  family: 4 | 6;
  /** The local address as text: `127.0.0.1`, `0.0.0.0`, `::`, `::1`, `::ffff:127.0.0.1`, … */
  address: string;
  port: number;
  /** The socket's owner (the user that made it), as the table says. */
  uid: number;
  /** Inode of the socket: `socket:[<inode>]` in the fd links of every process holding it. */
  inode: string;
}

const HAS_PROC = process.platform === 'linux';
/** The state column of a listening socket (TCP_LISTEN). */
const LISTEN = '0A';
const LITTLE_ENDIAN = endianness() === 'LE';

/** Whether this system has the tables tcpListeners reads. */
export function procNetAvailable(): boolean {
  return HAS_PROC;
}

/**
 * An address as /proc/net/tcp{,6} prints it: the bytes of each 32-bit word in the host's order, in hex
 * (on x86 127.0.0.1 is `0100007F`).
 */
export function parseProcNetAddress(hex: string): string | undefined {
  if (!/^[0-9A-Fa-f]+$/.test(hex) || (hex.length !== 8 && hex.length !== 32)) return undefined;
  const bytes = Buffer.from(hex, 'hex');
  if (LITTLE_ENDIAN) for (let i = 0; i < bytes.length; i += 4) bytes.subarray(i, i + 4).reverse();
  if (bytes.length === 4) return [...bytes].join('.');
  // IPv4-mapped (::ffff:a.b.c.d) as Node and the tools write it.
  if (bytes.subarray(0, 10).every((b) => b === 0) && bytes[10] === 0xff && bytes[11] === 0xff) return `::ffff:${[...bytes.subarray(12)].join('.')}`;
  const groups = Array.from({ length: 8 }, (_, i) => bytes.readUInt16BE(i * 2));
  // The longest run of two or more zero groups becomes `::` (RFC 5952).
  let best = { at: -1, len: 0 };
  for (let i = 0; i < 8; ) {
    if (groups[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && groups[j] === 0) j++;
    if (j - i > best.len && j - i >= 2) best = { at: i, len: j - i };
    i = j;
  }
  const hexes = groups.map((g) => g.toString(16));
  if (best.at < 0) return hexes.join(':');
  return `${hexes.slice(0, best.at).join(':')}::${hexes.slice(best.at + best.len).join(':')}`;
}

/** The listening sockets of one /proc/net/tcp or tcp6 table (its header line and other states skipped). */
export function parseTcpTable(text: string, family: 4 | 6): TcpListener[] {
  const out: TcpListener[] = [];
  for (const line of text.split('\n')) {
    // sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode …
    const f = line.trim().split(/\s+/);
    if (f.length < 10 || !/^\d+:$/.test(f[0]!) || f[3] !== LISTEN) continue;
    const [addr, port] = f[1]!.split(':');
    const address = addr === undefined ? undefined : parseProcNetAddress(addr);
    if (!address || !port || !/^[0-9A-Fa-f]{4}$/.test(port) || !/^\d+$/.test(f[7]!) || !/^\d+$/.test(f[9]!)) continue;
    out.push({ family, address, port: parseInt(port, 16), uid: Number(f[7]), inode: f[9]! });
  }
  return out;
}

function readTable(path: string, required: boolean): string {
  try {
    return readFileSync(path, 'utf8');
  } catch (err) {
    // A host without IPv6 has no tcp6 table: nothing listens there.
    if (!required && (err as NodeJS.ErrnoException).code === 'ENOENT') return '';
    throw new Error(`cannot read ${path}: ${(err as Error).message}`);
  }
}

/** The TCP sockets listening on `port`, on any address of either family (empty off Linux). Throws when /proc/net/tcp cannot be read. */
export function tcpListeners(port: number): TcpListener[] {
  if (!HAS_PROC) return [];
  return [...parseTcpTable(readTable('/proc/net/tcp', true), 4), ...parseTcpTable(readTable('/proc/net/tcp6', false), 6)].filter((l) => l.port === port);
}

/**
 * The socket inodes `pid` holds open (its fd table, shared by its threads). Undefined when its fds
 * cannot be read: gone, or another user's to a process that is not root (or not dumpable).
 */
export function socketInodesOf(pid: number): Set<string> | undefined {
  let fds: string[];
  try {
    fds = readdirSync(`/proc/${pid}/fd`);
  } catch {
    return undefined;
  }
  const inodes = new Set<string>();
  for (const fd of fds) {
    let target: string;
    try {
      target = readlinkSync(`/proc/${pid}/fd/${fd}`);
    } catch {
      continue; // closed meanwhile
    }
    const m = /^socket:\[(\d+)\]$/.exec(target);
    if (m) inodes.add(m[1]!);
  }
  return inodes;
}

/**
 * The processes holding a socket of inode `inode`: among `among`, or every process this one may look
 * into (a process not root sees only its own user's). A scan of every fd of every process: for a
 * verdict's message, not for a loop.
 */
export function processesHoldingSocket(inode: string, among?: readonly number[]): number[] {
  if (!HAS_PROC) return [];
  let pids: number[];
  try {
    pids = among ? [...among] : readdirSync('/proc').filter((n) => /^\d+$/.test(n)).map(Number);
  } catch {
    return [];
  }
  return pids.filter((pid) => socketInodesOf(pid)?.has(inode));
}

/** A process's command name (`/proc/<pid>/comm`), or undefined. */
export function processName(pid: number): string | undefined {
  if (!HAS_PROC) return undefined;
  try {
    return readFileSync(`/proc/${pid}/comm`, 'utf8').trim() || undefined;
  } catch {
    return undefined;
  }
}
