import { spawnSync } from 'node:child_process';
import { lstatSync, realpathSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { createFile } from './safe-files.js';
import type { BuildUser } from './shell-process.js';

/*
 * A build user's name (ADR 0008). The pool's ids are in no passwd database, and a uid without a name
 * breaks tools: `whoami`, ssh ("No user exists for uid"), so git over ssh, Node's os.userInfo(),
 * Python's getpass. Where root may make mount namespaces, each build shell starts in one of its own, in
 * which /etc/passwd and /etc/group are copies of the host's with one more line: the build's user,
 * named BUILD_USER_NAME, with the build's HOME. The copies are root's (0644) in the build's control
 * directory; the build cannot mount, so it cannot undo them, and nothing of this reaches the host.
 */

export const BUILD_USER_NAME = 'conveyor-build';

/**
 * A root-owned program none but root may replace, by absolute path (never looked up on a build's PATH):
 * the first of `paths` that is one, resolved (/bin/sh is a link to dash or bash).
 */
export function rootTool(paths: readonly string[]): string | undefined {
  for (const path of paths) {
    try {
      const real = realpathSync(path);
      const info = lstatSync(real);
      if (info.isFile() && info.uid === 0 && (info.mode & 0o022) === 0) return real;
    } catch {
      // not here
    }
  }
  return undefined;
}

const UNSHARE = rootTool(['/usr/bin/unshare', '/bin/unshare']);
const MOUNT = rootTool(['/usr/bin/mount', '/bin/mount']);
const SH = rootTool(['/bin/sh', '/usr/bin/sh']);

/**
 * Run by /bin/sh in the new namespace, as root: bind the copies over the host's files, then exec the
 * rest of its arguments (setpriv and the shell). Constant text; the paths come as arguments.
 */
const NAME_SCRIPT = `"$1" --bind "$2" /etc/passwd && "$1" --bind "$3" /etc/group || {
  echo "[conveyor] the build user could not be given a name (bind mount failed)" >&2; exit 125; }
shift 3
exec "$@"`;

let probed: { ok: true } | { ok: false; why: string } | undefined;

/**
 * Whether build users can be named here: a root service with unshare(1) and mount(1) that may make a
 * mount namespace (a container without CAP_SYS_ADMIN may not). Asked once.
 */
export function namingSupport(): { ok: true } | { ok: false; why: string } {
  if (probed) return probed;
  if (process.getuid?.() !== 0) probed = { ok: false, why: 'the service is not root' };
  else if (!UNSHARE || !MOUNT || !SH) probed = { ok: false, why: 'unshare(1), mount(1) or /bin/sh is missing (root-owned, in /usr/bin or /bin); install util-linux and mount' };
  else {
    // A bind mount of a file onto itself, in a namespace that ends with the command.
    const r = spawnSync(UNSHARE, ['--mount', '--propagation', 'private', '--', MOUNT, '--bind', '/etc/passwd', '/etc/passwd'], { stdio: ['ignore', 'ignore', 'pipe'], encoding: 'utf8', timeout: 10_000 });
    probed = r.status === 0 ? { ok: true } : { ok: false, why: `a mount namespace cannot be made here (${(r.stderr || r.error?.message || `exit ${r.status}`).trim().split('\n')[0]}); in a container this needs CAP_SYS_ADMIN` };
  }
  return probed;
}

/** The host's entry for `id` in a passwd or group file's text, if any (third field). */
function hasId(text: string, id: number): boolean {
  return text.split('\n').some((line) => line.split(':')[2] === String(id));
}

/**
 * The program and arguments that start `command` as `user` with a name, in a mount namespace of its
 * own, given `command` (setpriv and the shell). Undefined when naming is not supported here, or when
 * the host already names the user. The copies are written into `controlDir` (root's) as
 * `passwd.<index>` and `group.<index>`.
 */
export async function namedCommand(user: BuildUser, home: string, controlDir: string, index: number, command: readonly string[]): Promise<string[] | undefined> {
  if (!namingSupport().ok) return undefined;
  const [passwd, group] = await Promise.all([readFile('/etc/passwd', 'utf8'), readFile('/etc/group', 'utf8')]);
  if (hasId(passwd, user.uid)) return undefined;
  const name = BUILD_USER_NAME;
  const line = (text: string, entry: string) => `${text}${text.endsWith('\n') || text === '' ? '' : '\n'}${entry}\n`;
  // HOME with a colon or newline would break the file's format: such a build gets `/` as its entry's home.
  const entryHome = /[:\n]/.test(home) ? '/' : home;
  const passwdCopy = join(controlDir, `passwd.${index}`);
  const groupCopy = join(controlDir, `group.${index}`);
  await createFile(passwdCopy, line(passwd, `${name}:x:${user.uid}:${user.gid}:Conveyor build:${entryHome}:/bin/bash`), undefined, 0o644);
  await createFile(groupCopy, hasId(group, user.gid) ? group : line(group, `${name}:x:${user.gid}:`), undefined, 0o644);
  return [UNSHARE!, '--mount', '--propagation', 'private', '--', SH!, '-c', NAME_SCRIPT, 'conveyor-name', MOUNT!, passwdCopy, groupCopy, ...command];
}
