import { spawnSync } from 'node:child_process';
import { lstatSync, readFileSync, realpathSync } from 'node:fs';

/**
 * A root-owned program none but root may replace, by absolute path (never looked up on a build's PATH,
 * which a buildspec sets): the first of `paths` that is one, resolved (/bin/sh is a link to dash or bash).
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

/** The programs root runs to start and stop builds' users, found once; undefined where this host has none. */
export const TOOLS = {
  setpriv: rootTool(['/usr/bin/setpriv', '/bin/setpriv']),
  bash: rootTool(['/usr/bin/bash', '/bin/bash']),
  prlimit: rootTool(['/usr/bin/prlimit', '/bin/prlimit']),
  unshare: rootTool(['/usr/bin/unshare', '/bin/unshare']),
  mount: rootTool(['/usr/bin/mount', '/bin/mount']),
  sh: rootTool(['/bin/sh', '/usr/bin/sh']),
  true: rootTool(['/usr/bin/true', '/bin/true']),
};

/** Whether the host's user database (passwd, LDAP, SSSD: getent) knows `uid`. */
export function hostKnowsUser(uid: number): boolean {
  return spawnSync('getent', ['passwd', String(uid)], { stdio: 'ignore', timeout: 10_000 }).status === 0;
}

/** A file's text, or '' where it cannot be read. */
export function readFileOr(path: string): string {
  try {
    return readFileSync(path, 'utf8');
  } catch {
    return '';
  }
}

/** This process's RLIMIT_NPROC (soft, hard), from /proc/self/limits; a field is absent where unlimited. */
export function ownProcessLimits(): { soft?: number; hard?: number } {
  const row = /^Max processes\s+(\S+)\s+(\S+)/m.exec(readFileOr('/proc/self/limits'));
  const limits: { soft?: number; hard?: number } = {};
  if (row?.[1] && row[1] !== 'unlimited') limits.soft = Number(row[1]);
  if (row?.[2] && row[2] !== 'unlimited') limits.hard = Number(row[2]);
  return limits;
}
