import { groupMembersOf, processesHoldingSocket, processName, procNetAvailable, socketInodesOf, tcpListeners } from '@conveyor/procfs';
import { groupIdentity, type RecordedGroup } from './process-group.js';

/**
 * The local addresses of a listening socket that may take a connection to 127.0.0.1 (a version's URL,
 * localUrl): the address itself, the IPv4 wildcard, the IPv6 wildcard (dual-stack unless IPV6_V6ONLY,
 * which /proc does not tell: counted), and their IPv4-mapped forms.
 */
const TAKES_LOOPBACK = new Set(['127.0.0.1', '0.0.0.0', '::', '::ffff:127.0.0.1', '::ffff:0.0.0.0']);

export type PortOwner =
  /** Every socket listening there is held by a process of the version's group; `sockets`: their inodes. */
  | { kind: 'version'; sockets: string }
  /** Nothing listens there. */
  | { kind: 'nobody' }
  /** A socket listening there is held by no process of the version's group: by `pid` when it could be found. */
  | { kind: 'stranger'; address: string; uid: number; pid?: number; command?: string }
  /** No /proc to ask (off Linux). */
  | { kind: 'unknown' };

/**
 * Who listens on `port` where a connection to 127.0.0.1 may land: the version whose process group is
 * `group` (by groupMembersOf's rule, so a reused pid is never taken for one of its processes), nobody,
 * or someone else. `ownUid`: the user id the version has to itself (a root deployer's versions each run
 * as a user of their own), whose sockets are the version's wherever in it they are held (a worker that
 * left the group with setsid, say); not given for a user the version shares. Reads /proc/net/tcp and tcp6, and the fds of the group's processes (every process's
 * only to name a stranger). Throws when /proc/net/tcp cannot be read.
 */
export function portOwner(port: number, group: RecordedGroup, ownUid?: number): PortOwner {
  if (!procNetAvailable()) return { kind: 'unknown' };
  const listeners = tcpListeners(port).filter((l) => TAKES_LOOPBACK.has(l.address));
  if (listeners.length === 0) return { kind: 'nobody' };
  const held = new Set<string>();
  for (const pid of groupMembersOf(groupIdentity(group), { strict: true })) {
    for (const inode of socketInodesOf(pid) ?? []) held.add(inode);
  }
  const foreign = listeners.find((l) => !held.has(l.inode) && l.uid !== ownUid);
  if (!foreign) return { kind: 'version', sockets: listeners.map((l) => l.inode).sort().join(',') };
  const pid = processesHoldingSocket(foreign.inode)[0];
  const command = pid === undefined ? undefined : processName(pid);
  return { kind: 'stranger', address: foreign.address, uid: foreign.uid, ...(pid === undefined ? {} : { pid }), ...(command === undefined ? {} : { command }) };
}

/** The message of a version whose health was answered on its port by a process not its own. */
export function strangerOnPort(port: number, healthPath: string, owner: Extract<PortOwner, { kind: 'stranger' }>): string {
  const who =
    owner.pid === undefined
      ? `a process of user id ${owner.uid} that this deployer cannot look into`
      : `pid ${owner.pid}${owner.command ? ` (${owner.command})` : ''}`;
  const address = owner.address.includes(':') ? `[${owner.address}]` : owner.address;
  return `${healthPath} answered 200 on port ${port}, but the socket listening there (${address}:${port}) belongs to ${who}, not to this version's process group: another process holds the version's port, so this version was not taken live and was stopped`;
}
