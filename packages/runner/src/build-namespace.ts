import { spawnSync } from 'node:child_process';
import { realpathSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { release } from 'node:os';
import { dirname, join } from 'node:path';
import { hostKnowsUser, TOOLS } from './host.js';
import { createFile } from './safe-files.js';
import type { BuildUser } from './shell-process.js';

/*
 * The namespaces of a build shell run as a user of its own (ADR 0008). Root starts the shell in a mount
 * and an IPC namespace of its own (unshare), mounts there what the build alone sees, then switches to
 * the user (setpriv). Root's mounts are locked: the build cannot undo them, and nothing of them reaches
 * the host; the namespaces end with the build's last process. (Where unprivileged user namespaces are
 * on, a build can make namespaces of its own, with the kernel's default IPC limits: see
 * usersCanMakeUserNamespaces.)
 * - A name: the pool's ids are in no passwd database, and a uid without a name breaks tools (`whoami`;
 *   ssh says "No user exists for uid", so git over ssh fails; Node's os.userInfo(), Python's getpass).
 *   /etc/passwd and /etc/group are copies of the host's with one more line: the build's user, named
 *   BUILD_USER_NAME, with the build's HOME. The copies are root's (0644) in its control directory.
 * - /proc mounted again with hidepid=invisible: the build sees its user's processes only, not other
 *   builds' command lines or the service's (with a shared BUILD_UID, the other builds are its user's).
 * - /tmp and /var/tmp: its own temporary directory (the one TMPDIR names); /dev/shm: a directory of its
 *   own beside it. On disk, gone with the job. /tmp and /var/tmp stay the host's where WORK_DIR lies
 *   under them (the build's own files would be hidden).
 * - SysV IPC (shared memory, semaphores, message queues): its own, with limits, gone with it.
 * Each shell of a build gets its own: after an `exit`, the next shell's IPC is new (its /tmp and
 * /dev/shm are the same directories).
 * Root's programs here never see the build's environment nor enter its directories (shell-process.ts).
 */

export const BUILD_USER_NAME = 'conveyor-build';

/** The exit status of a shell whose namespace could not be set up (SETUP_SCRIPT). */
export const NAMESPACE_NOT_SET_UP = 125;

const { unshare: UNSHARE, mount: MOUNT, sh: SH } = TOOLS;

/** /dev/shm for a shell without a temporary directory of its own: small, as Docker's. */
const SHM_OPTIONS = 'mode=1777,nosuid,nodev,size=64m,nr_inodes=16384';

/*
 * SysV IPC limits of a build's IPC namespace (its own sysctls; a new namespace starts from the kernel's
 * defaults, which let one build pin tens of GiB in semaphores and message queues). It is memory no
 * process holds, so the OOM killer could not take it back from the build: 256 MiB of shared memory in
 * 64 segments; 16 message queues (16 KiB of messages each: ~20 MiB of kernel memory at worst, with the
 * headers of many tiny messages); 128 semaphore sets of 250.
 */
const SHM_BYTES = 268_435_456;
const SHM_SEGMENTS = 64;
const MSG_QUEUES = 16;
const SEMAPHORES = '250 32000 500 128';
const SYSV_LIMITS_TEXT = 'shm 256 MiB in 64 segments, 16 message queues, 128 semaphore sets';

/**
 * Run by /bin/sh as root in the new namespaces, with root's environment only (shell-process.ts): the
 * mounts and limits, then exec of the rest of its arguments (setpriv and the loader). Constant text: the
 * paths come as arguments ($1 mount, $2 and $3 the passwd and group copies or empty, $4 the build's
 * temporary directory or empty, $5 `tmp` when that is to be /tmp and /var/tmp, $6 the build's shared
 * memory directory to bind as /dev/shm, or `tmpfs` for a small one, or empty to leave the host's).
 * /dev/shm is on disk (memory there could not be taken back while the build runs). Links at /var/tmp or
 * /dev/shm are left alone, and /tmp comes last: once it is the user's, a target resolved through it
 * would be the build's to choose.
 */
const SETUP_SCRIPT = `m=$1 passwd=$2 group=$3 tmp=$4 ownTmp=$5 shm=$6
shift 6
fail() { echo "[conveyor] the build's namespace could not be set up: $1" >&2; exit ${NAMESPACE_NOT_SET_UP}; }
if [ -n "$passwd" ]; then "$m" --bind "$passwd" /etc/passwd && "$m" --bind "$group" /etc/group || fail "its user's name"; fi
"$m" -t proc -o nosuid,nodev,noexec,hidepid=invisible proc /proc || fail "a /proc of its own"
if [ -d /dev/mqueue ]; then "$m" -t mqueue -o nosuid,nodev,noexec mqueue /dev/mqueue || fail "a /dev/mqueue of its own"; fi
# SysV IPC: the namespace's own limits (${SYSV_LIMITS_TEXT}).
{ echo ${SHM_BYTES} > /proc/sys/kernel/shmmax &&
  echo $((${SHM_BYTES} / $(getconf PAGESIZE))) > /proc/sys/kernel/shmall &&
  echo ${SHM_SEGMENTS} > /proc/sys/kernel/shmmni &&
  echo ${MSG_QUEUES} > /proc/sys/kernel/msgmni &&
  echo ${SEMAPHORES} > /proc/sys/kernel/sem; } || fail "limits on its SysV IPC"
if [ -n "$shm" ] && [ -d /dev/shm ] && [ ! -L /dev/shm ]; then
  if [ "$shm" = tmpfs ]; then "$m" -t tmpfs -o ${SHM_OPTIONS} tmpfs /dev/shm; else "$m" --bind "$shm" /dev/shm; fi || fail "a /dev/shm of its own"
fi
if [ -n "$tmp" ] && [ -n "$ownTmp" ]; then
  if [ -d /var/tmp ] && [ ! -L /var/tmp ]; then "$m" --bind "$tmp" /var/tmp || fail "a /var/tmp of its own"; fi
  "$m" --bind "$tmp" /tmp || fail "a /tmp of its own"
fi
exec "$@"`;

const unshare = (): string[] => [UNSHARE!, '--mount', '--ipc', '--propagation', 'private', '--', SH!, '-c', SETUP_SCRIPT, 'conveyor-namespace', MOUNT!];

let probed: { ok: true } | { ok: false; why: string } | undefined;

/** Linux 5.8 gave each mount of /proc its own options; before, hidepid on ours would change the host's. */
function kernelAtLeast(major: number, minor: number): boolean {
  const [a = 0, b = 0] = release().split('.').map((n) => parseInt(n, 10));
  return a > major || (a === major && b >= minor);
}

/**
 * Whether builds get namespaces here: a root service on Linux 5.8 or later, with unshare(1) and mount(1),
 * that may make mount and IPC namespaces (a container without CAP_SYS_ADMIN may not). Asked once, by
 * setting one up (without a name or temporary directory) around `true`.
 */
export function namespaceSupport(): { ok: true } | { ok: false; why: string } {
  if (probed) return probed;
  if (process.getuid?.() !== 0) probed = { ok: false, why: 'the service is not root' };
  else if (!kernelAtLeast(5, 8)) probed = { ok: false, why: `Linux ${release()} is older than 5.8 (a /proc of a build's own needs 5.8)` };
  else if (!UNSHARE || !MOUNT || !SH) probed = { ok: false, why: 'unshare(1), mount(1) or /bin/sh is missing (root-owned, in /usr/bin or /bin); install util-linux and mount' };
  else {
    const [file, ...args] = [...unshare(), '', '', '', '', 'tmpfs', TOOLS.true ?? '/bin/true'];
    const r = spawnSync(file!, args, { stdio: ['ignore', 'ignore', 'pipe'], encoding: 'utf8', timeout: 10_000 });
    probed = r.status === 0 ? { ok: true } : { ok: false, why: `namespaces cannot be made here (${(r.stderr || r.error?.message || `exit ${r.status}`).trim().split('\n').pop()}); in a container this needs CAP_SYS_ADMIN` };
  }
  return probed;
}

/**
 * Whether a build's user could make a user namespace of its own here (unprivileged user namespaces are
 * on). Inside one it may mount (a tmpfs) and make an IPC namespace with the kernel's default limits, so
 * the limits above do not bound its memory. Asked once, as `uid`.
 */
export function usersCanMakeUserNamespaces(uid: number): boolean {
  const { setpriv, true: TRUE } = TOOLS;
  if (!UNSHARE || !setpriv || !TRUE || process.getuid?.() !== 0) return false;
  const r = spawnSync(setpriv, [`--reuid=${uid}`, `--regid=${uid}`, '--clear-groups', '--no-new-privs', '--', UNSHARE, '--user', '--', TRUE], { stdio: 'ignore', cwd: '/', env: {}, timeout: 10_000 });
  return r.status === 0;
}

/** Whether a passwd or group file's text has an entry for `id` (its third field). */
function hasId(text: string, id: number): boolean {
  return text.split('\n').some((line) => line.split(':')[2] === String(id));
}

const named = new Map<number, boolean>();
/** Whether the host names `uid` (hostKnowsUser), asked once per uid: shells start often, getent blocks. */
function hostNames(uid: number): boolean {
  let known = named.get(uid);
  if (known === undefined) named.set(uid, (known = hostKnowsUser(uid)));
  return known;
}

/** `path` resolved, or as given if it is not there. */
function real(path: string): string {
  try {
    return realpathSync(path);
  } catch {
    return path;
  }
}

/** Whether `path` is `dir` or inside it, both resolved. */
function inside(path: string, dir: string): boolean {
  const [p, d] = [real(path), real(dir)];
  return p === d || p.startsWith(`${d}/`);
}

/**
 * Which of the shared temporary directories a build gets of its own, given the directories root keeps
 * its files in (WORK_DIR and the control directory: root's, never the build's to choose): not those
 * that hold them, which would then be hidden from it.
 */
export function privateTemporaries(rootDirs: readonly string[]): { tmp: boolean; shm: boolean } {
  return {
    tmp: !rootDirs.some((d) => inside(d, '/tmp') || inside(d, '/var/tmp')),
    shm: !rootDirs.some((d) => inside(d, '/dev/shm')),
  };
}

export interface BuildNamespaceOptions {
  user: BuildUser;
  /** The HOME its passwd entry gives the user. */
  home: string;
  /** Root's directory for the passwd and group copies (`passwd.<index>`, `group.<index>`). */
  controlDir: string;
  index: number;
  /**
   * The build's temporary directory (its user's, in WORK_DIR), to be its /tmp and /var/tmp unless
   * WORK_DIR or the control directory lies under those (see privateTemporaries).
   */
  tmpDir?: string;
  /** The build's shared memory directory (its user's, in WORK_DIR), to be its /dev/shm; else a small tmpfs. */
  shmDir?: string;
}

/**
 * The program and arguments that run `command` (setpriv and the shell) in namespaces of its own, and
 * whether the user was given a name there (not when the host already names it). Undefined where
 * namespaces cannot be made: the build then runs in the host's.
 */
export async function inBuildNamespace(opts: BuildNamespaceOptions, command: readonly string[]): Promise<{ argv: string[]; name?: string } | undefined> {
  if (!namespaceSupport().ok) return undefined;
  const { user, controlDir, index } = opts;
  let copies: [string, string] = ['', ''];
  let name: string | undefined;
  if (!hostNames(user.uid)) {
    const [passwd, group] = await Promise.all([readFile('/etc/passwd', 'utf8'), readFile('/etc/group', 'utf8')]);
    // A host that has a user of that name already: the build's gets its uid after the name.
    name = passwd.split('\n').some((line) => line.startsWith(`${BUILD_USER_NAME}:`)) ? `${BUILD_USER_NAME}-${user.uid}` : BUILD_USER_NAME;
    const line = (text: string, entry: string) => `${text}${text.endsWith('\n') || text === '' ? '' : '\n'}${entry}\n`;
    // A HOME with a colon or newline would break the file's format: such a build's entry says `/`.
    const home = /[:\n]/.test(opts.home) ? '/' : opts.home;
    copies = [join(controlDir, `passwd.${index}`), join(controlDir, `group.${index}`)];
    await createFile(copies[0], line(passwd, `${name}:x:${user.uid}:${user.gid}:Conveyor build:${home}:/bin/bash`), undefined, 0o644);
    await createFile(copies[1], hasId(group, user.gid) ? group : line(group, `${name}:x:${user.gid}:`), undefined, 0o644);
  }
  const own = privateTemporaries([controlDir, ...[opts.tmpDir, opts.shmDir].filter((d): d is string => d !== undefined).map((d) => dirname(d))]);
  const shm = !own.shm ? '' : (opts.shmDir ?? 'tmpfs');
  return { argv: [...unshare(), ...copies, opts.tmpDir ?? '', own.tmp ? 'tmp' : '', shm, ...command], ...(name ? { name } : {}) };
}
