import { spawn, type ChildProcess, type StdioNull, type StdioPipe } from 'node:child_process';
import { constants } from 'node:os';
import { accessSync, constants as fsConstants, statSync } from 'node:fs';
import { access, rm, stat } from 'node:fs/promises';
import { isAbsolute, join, resolve } from 'node:path';
import type { Readable, Writable } from 'node:stream';
import { groupAlive } from '@conveyor/procfs';
import { inBuildNamespace } from './build-namespace.js';
import { ownProcessLimits, TOOLS } from './host.js';
import { BUILD_MARK, writeShellRecord } from './orphans.js';

/**
 * setpriv by absolute path, and only a root-owned one nobody else may replace: spawn would look a bare
 * name up on the build's PATH, which a buildspec sets (a fake there would run builds without
 * no_new_privs). Undefined when this host has none (checkSetpriv says so at start-up).
 */
export const SETPRIV = TOOLS.setpriv;

export function checkBash(): string {
  if (!TOOLS.bash) throw new Error('builds run as other users need bash in /usr/bin or /bin (root-owned)');
  return TOOLS.bash;
}

let serviceBash: string | null | undefined;

/**
 * The bash a build run as this service's own user starts, by absolute path, found once: the root-owned
 * one (TOOLS.bash), else the first on this service's own PATH. Never looked up on the build's PATH,
 * which a buildspec sets (`$HOME/.local/bin:$PATH` there is literal text: no bash would be found).
 */
function bashOfService(): string {
  if (serviceBash === undefined) serviceBash = TOOLS.bash ?? onPath('bash', process.env.PATH ?? '') ?? null;
  if (serviceBash === null) throw new Error("no bash in /usr/bin, /bin or the service's PATH; install bash, or set env.shell: /bin/sh");
  return serviceBash;
}

function onPath(name: string, path: string): string | undefined {
  for (const dir of path.split(':')) {
    if (!isAbsolute(dir)) continue;
    const file = join(dir, name);
    try {
      if (statSync(file).isFile()) {
        accessSync(file, fsConstants.X_OK);
        return file;
      }
    } catch {
      // not here
    }
  }
  return undefined;
}

/** The absolute path of the shell a build runs (`/bin/sh` is one already). */
function shellPath(shell: ShellKind, asUser: boolean): string {
  if (shell === '/bin/sh') return shell;
  return asUser ? checkBash() : bashOfService();
}

function checkPrlimit(): string {
  if (!TOOLS.prlimit) throw new Error('a build process limit needs prlimit(1) in /usr/bin or /bin (root-owned); install util-linux');
  return TOOLS.prlimit;
}

/** `soft:hard` for prlimit: `limit`, or this process's own where that is lower (lowered, never raised). */
function lowered(limit: number): string {
  const own = ownProcessLimits();
  return `${Math.min(limit, own.soft ?? limit)}:${Math.min(limit, own.hard ?? limit)}`;
}

/** The whole environment of the programs root runs to start a user's shell (unshare, sh, mount, setpriv). */
const ROOT_ENV = { PATH: '/usr/sbin:/usr/bin:/sbin:/bin' };

/** Names a shell can export: others cannot be handed over by the loader. */
const SHELL_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;

/**
 * Run by bash as the build's (or deployed app's) user, with ROOT_ENV only: enters the workspace as the user (root never
 * chdirs into a directory the build controls: a symlink there would take the shell where its user could
 * not go), exports the build's environment from NUL-terminated NAME=VALUE records on fd 5, and execs
 * the shell. Constant text; the workspace comes as $1, the shell and its arguments after it (after
 * options of `exec` first, if any: a build's shell comes as `-a bash /usr/bin/bash …`, so its $0 is `bash`).
 */
export const USER_LOADER = `cd -- "$1" || { echo "[conveyor] user $UID cannot enter its workspace $1" >&2; exit 123; }
unset OLDPWD
shift
__cv_all=()
while IFS= read -r -d '' __cv_kv <&5; do __cv_all+=("$__cv_kv"); done
exec 5<&-
# POSIXLY_CORRECT comes last (envRecords): posix mode would make a refused export (a read-only UID) fatal.
for __cv_kv in "\${__cv_all[@]}"; do export -- "$__cv_kv" 2>/dev/null; done
exec "$@"`;

/**
 * Largest environment handed to a build: exec refuses one string over 128 KiB, and the whole with the
 * arguments over about 2 MiB; the loader reads it a byte at a time (~0.6 s per MiB).
 */
const MAX_ENV_ENTRY = 128 * 1024 - 1;
const MAX_ENV_BYTES = 1024 * 1024;

/**
 * Why `env` cannot be handed to a build (too large, a NUL), or undefined. `reserve`: bytes to leave for
 * what is added later (PATH, LANG, the build mark, USER, LOGNAME: a check before the session starts).
 */
export function environmentProblem(env: Record<string, string>, reserve = 0): string | undefined {
  let total = 0;
  for (const [name, value] of Object.entries(env)) {
    // A NUL would end a record early: what follows it would become a variable of its own.
    if (value.includes('\0')) return `the build's environment variable ${name} holds a NUL byte`;
    const bytes = Buffer.byteLength(name) + Buffer.byteLength(value) + 1;
    if (bytes > MAX_ENV_ENTRY) return `the build's environment variable ${name} is over 128 KiB`;
    total += bytes + 1;
  }
  return total > MAX_ENV_BYTES - reserve ? "the build's environment is over 1 MiB" : undefined;
}

/** The records the loader reads (POSIXLY_CORRECT last), and the names it cannot take. */
function envRecords(env: Record<string, string>): { records: string; unexportable: string[] } {
  const problem = environmentProblem(env);
  if (problem) throw new Error(problem);
  const unexportable: string[] = [];
  const records: string[] = [];
  for (const [name, value] of Object.entries(env)) {
    // __cv_* are the loader's own variables.
    if (!SHELL_NAME.test(name) || name.startsWith('__cv_')) unexportable.push(name);
    else if (name === 'POSIXLY_CORRECT') continue;
    else records.push(`${name}=${value}\0`);
  }
  if (env.POSIXLY_CORRECT !== undefined) records.push(`POSIXLY_CORRECT=${env.POSIXLY_CORRECT}\0`);
  return { records: records.join(''), unexportable };
}

export const UNEXPORTABLE_WHY = "a shell can only export names of letters, digits and _, and __cv_* are the loader's";

/**
 * The programs root runs to start `program` as `user` in `cwd`: setpriv switches to the user (its ids
 * only, no_new_privs: no setuid file grants it more), then USER_LOADER enters `cwd` as the user, takes
 * the environment from fd 5 and execs `program`, all in one process (same pid and process group).
 * Under prlimit when the user has a process limit. Start it with `spawnAsUser`.
 */
export function asUserArgv(user: BuildUser, cwd: string, program: readonly string[]): string[] {
  const argv = [checkSetpriv(), `--reuid=${user.uid}`, `--regid=${user.gid}`, '--clear-groups', '--no-new-privs', '--', checkBash(), '--noprofile', '--norc', '-c', USER_LOADER, 'conveyor-loader', resolve(cwd), ...program];
  // The process limit is set by root (prlimit) on the process that then switches to the user: it is
  // inherited, and the switch itself fails if the user already has that many (a build at its limit).
  if (user.maxProcesses) argv.unshift(checkPrlimit(), `--nproc=${lowered(user.maxProcesses)}`, '--');
  return argv;
}

/**
 * Spawns `argv` (asUserArgv's, possibly wrapped) detached, as root with ROOT_ENV in `rootCwd` (a
 * directory of root's), with `stdio` as fds 0-4 and `env` handed to the loader on fd 5. Returns the
 * names a shell cannot export, which were left out.
 */
export function spawnAsUser(
  argv: readonly string[],
  env: Record<string, string>,
  opts: { rootCwd: string; stdio: readonly (StdioNull | StdioPipe | number)[] },
): { child: ChildProcess; unexportable: string[] } {
  const { records, unexportable } = envRecords(env);
  const stdio = [...opts.stdio];
  while (stdio.length < 5) stdio.push('ignore');
  const child = spawn(argv[0]!, argv.slice(1), { cwd: opts.rootCwd, env: ROOT_ENV, detached: true, stdio: [...stdio, 'pipe'] });
  const fd5 = (child.stdio as unknown as Writable[])[5]!;
  fd5.on('error', () => {}); // EPIPE if the program died first: its exit reports that
  fd5.end(records);
  return { child, unexportable };
}

/** Throws, saying what to install, when builds cannot be run as other users here. */
export function checkSetpriv(): string {
  if (!SETPRIV) throw new Error('builds run as other users through setpriv(1), which is not in /usr/bin or /bin here (root-owned); install util-linux');
  return SETPRIV;
}

/*
 * The shell reads its program from its stdin, a pipe only we write: PRELUDE once, then STEP once
 * for each file it is to run. Both are constant and never contain user text. STEP reads the file's
 * path as one line from fd 3, sources that file, and writes the exit status to fd 4. User commands
 * run with stdin from /dev/null and with fds 3 and 4 closed, so they can neither eat nor forge
 * control traffic.
 * Each file is sourced at the shell's top level, as a line of a script would be: not from inside a
 * loop, where a user's `break`/`continue` (`break 5`, or `continue` at the top of a command) would
 * act on our loop (ending the shell, or skipping the status so the build hangs); nor from inside a
 * function, where `declare`/`typeset` would make the command's variables local, `set --` would not
 * last, and ERR, DEBUG and RETURN traps would behave differently. So a command behaves as it would
 * in a script run by bash, and its state (variables, functions, cd, options, traps) stays.
 * `\command` keeps a user function named `read`, `printf` or `.` (and a user's alias) from
 * hijacking a step. A `*.query.sh` file (our own constant scripts) gets `<name>.in` as stdin and
 * writes its answer into `<name>.out`, which the session made for it: the shell cannot create files
 * in the control directory (`>|`: a user's `set -C` must not refuse the existing file). A user's
 * `set -x` and `set -v` are switched off while a step's own plumbing is read and run, and back on
 * for the next command, so the trace shows their commands, not ours.
 * Each status names the file it answers: a stray write to a saved copy of fd 4 (bash keeps them at
 * fds 10+) cannot shift statuses onto the wrong command; it ends the shell as a broken protocol.
 * PRELUDE points the shell's fd 2 at its fd 1: the build's stdout and stderr share one pipe, so the
 * log has their lines in the order they were written (as CodeBuild's log has). Nothing needs them
 * apart; the status travels on fd 4. Only what is printed before the shell runs PRELUDE (the
 * loader's or the namespace's own errors) comes on the separate stderr pipe.
 */
export const PRELUDE = `exec 2>&1
__cv_o=
`;

/** The exit status of a shell that could not enter its workspace (USER_LOADER). */
export const CANNOT_ENTER_WORKSPACE = 123;

/**
 * A shell that could not be started for a reason the build itself made (it removed its workspace, or
 * its control directory, which a build run as the service's own user can reach): its command fails,
 * saying why. Any other failure to start one (the host out of processes or files, a tool missing) is
 * the service's, and errors the job, which is then tried again.
 */
export class ShellStartError extends Error {
  override name = 'ShellStartError';
}

export const STEP = `{ IFS= \\command read -r __cv_f <&3 || \\command exit 0
  case $__cv_f in
    *.query.sh) \\command . "$__cv_f" <"\${__cv_f%.sh}.in" >|"\${__cv_f%.sh}.out" 3<&- 4>&-
      __cv_rc=$? ;;
    *-cmd.sh) case $__cv_o in *v*) set -v ;; esac
      case $__cv_o in *x*) set -x ;; esac
      \\command . "$__cv_f" </dev/null 3<&- 4>&-
      { __cv_rc=$? __cv_o=$-; set +xv; } 2>/dev/null ;;
    *) \\command . "$__cv_f" </dev/null 3<&- 4>&-
      __cv_rc=$? ;;
  esac
  \\command printf '%s %s\\n' "$__cv_rc" "$__cv_f" >&4
} </dev/null
`;

export type ShellKind = 'bash' | '/bin/sh';

export interface ShellProcessOptions {
  shell: ShellKind;
  cwd: string;
  env: Record<string, string>;
  controlDir: string;
  /** Distinguishes the records of successive shells of one session. */
  index: number;
  onOutput: (chunk: string) => void;
  /** Run the shell as this user (needs a root worker). */
  user?: BuildUser;
  /** With a user: its temporary directory, which is its /tmp and /var/tmp where namespaces can be made. */
  tmpDir?: string;
  /** With a user: its shared memory directory, which is its /dev/shm where namespaces can be made. */
  shmDir?: string;
}

/** The Linux user builds run as, so they cannot read the worker's memory or environment. */
export interface BuildUser {
  uid: number;
  gid: number;
  /**
   * Most processes and threads the user may have at once (RLIMIT_NPROC, set by the loader: a build's
   * fork bomb stops there). Counted per user, so per build for the pool's ids. Default: no limit set.
   */
  maxProcesses?: number;
}

export type SendResult =
  | { kind: 'status'; code: number }
  /** The shell died while (or before) running the file; `code` is its exit status (128+n for signal n). */
  | { kind: 'exited'; code: number };

function exitCodeOf(code: number | null, signal: NodeJS.Signals | null): number {
  if (code !== null) return code;
  return 128 + (signal ? (constants.signals[signal] ?? 0) : 0);
}

const delay = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** One long-lived shell in its own process group, driven through PRELUDE and STEP. */
export class ShellProcess {
  private readonly lines: string[] = [];
  private pending = '';
  private waiter?: (r: SendResult) => void;
  private exitCode?: number;
  private outputTicks = 0;
  private readonly exited: Promise<void>;
  private recordPath?: string;

  private constructor(
    private readonly child: ChildProcess,
    readonly pid: number,
  ) {
    this.exited = new Promise((resolve) => child.once('exit', () => resolve()));
  }

  static async start(opts: ShellProcessOptions): Promise<ShellProcess> {
    // -s: the program comes on stdin (PRELUDE, then a STEP per file).
    const args = opts.shell === 'bash' ? ['--noprofile', '--norc', '-s'] : ['-s'];
    if (!opts.user) {
      // By absolute path (the build's PATH is the build's: it may not lead to any bash), named as before
      // ($0 is `bash` or `/bin/sh`), in the workspace (a relative BASH_ENV is read from it, as always).
      let child: ChildProcess;
      try {
        child = spawn(shellPath(opts.shell, false), args, {
          argv0: opts.shell,
          cwd: opts.cwd,
          env: opts.env,
          detached: true,
          stdio: ['pipe', 'pipe', 'pipe', 'pipe', 'pipe'],
        });
      } catch (err) {
        // Node throws at once for some working directories (a file: ENOTDIR; a link loop: ELOOP).
        throw await whyNotStarted(err, opts);
      }
      return ShellProcess.started(child, opts);
    }
    // As another user, setpriv (started by root) switches to it and sets no_new_privs, then execs
    // USER_LOADER, which execs the shell: same pid, same process group. No setuid or setgid file (one a
    // build left, or extracted) grants the build another user's rights. Not Node's own uid switch: a
    // spawn made as the user waits, in Node's main thread, for an exec that the build's processes (a
    // second shell's, after an `exit`) could stop from happening.
    // Where it can, root first puts the shell in namespaces of its own: a name for its user, its own
    // /proc, /tmp, /dev/shm and SysV IPC (build-namespace.ts).
    // Nothing of the build reaches a program root runs: they start in root's control directory with
    // ROOT_ENV (LD_PRELOAD, BASH_ENV, LIBMOUNT_* … would otherwise run the build's code as root, or
    // steer it), and the build's environment travels on fd 5 to the loader, which reads it as the user.
    // The shell by absolute path too, not looked up on the build's PATH by the loader; `exec -a` keeps its $0.
    const asUser = asUserArgv(opts.user, opts.cwd, ['-a', opts.shell, shellPath(opts.shell, true), ...args]);
    const isolated = await inBuildNamespace(
      { user: opts.user, home: opts.env.HOME ?? '/', controlDir: opts.controlDir, index: opts.index, ...(opts.tmpDir ? { tmpDir: opts.tmpDir } : {}), ...(opts.shmDir ? { shmDir: opts.shmDir } : {}) },
      asUser,
    );
    const [file, ...argv] = isolated?.argv ?? asUser;
    const env = isolated?.name ? { USER: isolated.name, LOGNAME: isolated.name, ...opts.env } : opts.env;
    const { child, unexportable } = spawnAsUser([file!, ...argv], env, { rootCwd: opts.controlDir, stdio: ['pipe', 'pipe', 'pipe', 'pipe', 'pipe'] });
    if (unexportable.length) opts.onOutput(`[conveyor] not passed to the build: ${unexportable.join(', ')} (${UNEXPORTABLE_WHY})\n`);
    return ShellProcess.started(child, opts);
  }

  private static async started(child: ChildProcess, opts: ShellProcessOptions): Promise<ShellProcess> {
    try {
      await new Promise<void>((resolve, reject) => {
        child.once('spawn', resolve);
        child.once('error', reject);
      });
    } catch (err) {
      throw await whyNotStarted(err, opts);
    }
    const shell = new ShellProcess(child, child.pid!);
    shell.wire(opts.onOutput);
    try {
      shell.recordPath = await writeShellRecord(opts.controlDir, opts.index, shell.pid, opts.env[BUILD_MARK]);
    } catch (err) {
      // Not started, then: nothing may run on unrecorded.
      await shell.terminate(0);
      for (const stream of child.stdio) stream?.destroy();
      // Its control directory removed or replaced, or a record planted in it: a build run as the service's
      // own user can reach it. Anything else (no space, no files left) is the service's.
      const code = (err as NodeJS.ErrnoException).code;
      if (!(await enterable(opts.controlDir)) || code === 'EEXIST' || code === 'ELOOP' || code === 'ENOTDIR') {
        throw new ShellStartError(`its control directory ${opts.controlDir} was removed or changed (by the build?): ${(err as Error).message}`, { cause: err });
      }
      throw err;
    }
    return shell;
  }

  private sent = '';
  private onOutput: (chunk: string) => void = () => {};

  private wire(onOutput: (chunk: string) => void): void {
    this.onOutput = onOutput;
    const program = this.child.stdin!;
    const control = this.child.stdio[3] as Writable;
    const status = this.child.stdio[4] as Readable;
    program.on('error', () => {}); // EPIPE once the shell is gone; the exit event reports it
    program.write(PRELUDE);
    for (const stream of [this.child.stdout!, this.child.stderr!]) {
      stream.setEncoding('utf8');
      stream.on('data', (chunk: string) => {
        this.outputTicks += 1;
        onOutput(chunk);
      });
    }
    control.on('error', () => {}); // EPIPE once the shell is gone; the exit event reports it
    status.setEncoding('utf8');
    status.on('data', (chunk: string) => this.onStatus(chunk));
    status.on('error', () => {});
    this.child.once('exit', (code, signal) => {
      this.exitCode = exitCodeOf(code, signal);
      this.settle();
    });
  }

  private onStatus(chunk: string): void {
    const parts = (this.pending + chunk).split('\n');
    this.pending = parts.pop() ?? '';
    this.lines.push(...parts);
    this.settle();
  }

  private settle(): void {
    const resolve = this.waiter;
    if (!resolve) return;
    const line = this.lines.shift();
    if (line !== undefined) {
      this.waiter = undefined;
      const m = /^(\d+) (.+)$/.exec(line);
      if (m && m[2] === this.sent) {
        this.answered = true;
        return resolve({ kind: 'status', code: Number(m[1]) });
      }
      // Something else wrote to the status pipe: no later status can be trusted. End the shell.
      this.onOutput(`\n[conveyor] the build wrote to Conveyor's control channel (got ${JSON.stringify(line.slice(0, 80))}); stopping this shell\n`);
      try {
        process.kill(-this.pid, 'SIGKILL');
      } catch {
        // already gone
      }
      resolve({ kind: 'exited', code: 255 });
    } else if (this.exitCode !== undefined) {
      this.waiter = undefined;
      resolve({ kind: 'exited', code: this.exitCode });
    }
  }

  get alive(): boolean {
    return this.exitCode === undefined;
  }

  /**
   * Whether the shell has answered a file it was sent: one that ends before its first answer never came
   * up (it could not enter its workspace, its program could not be run, its namespace set up).
   */
  answered = false;

  /** Sources the file in the shell and waits for its status (or for the shell to die). */
  async send(path: string): Promise<SendResult> {
    if (this.waiter) throw new Error('a file is already running in this shell');
    const result = new Promise<SendResult>((resolve) => {
      this.waiter = resolve;
    });
    this.sent = path;
    if (this.alive) {
      (this.child.stdio[3] as Writable).write(`${path}\n`);
      this.child.stdin!.write(STEP);
    }
    this.settle();
    const r = await result;
    await this.drainOutput(r.kind === 'exited');
    return r;
  }

  /**
   * Output and status travel on different pipes. Output written before the status line is
   * already readable when the status arrives, so a few event-loop turns without new output
   * mean it has all been delivered. After an exit, wait a little for the pipes to close.
   */
  private async drainOutput(exited: boolean): Promise<void> {
    if (exited) {
      const stdout = this.child.stdout!;
      const stderr = this.child.stderr!;
      const ended = (s: Readable) => (s.readableEnded || s.destroyed ? Promise.resolve() : new Promise<void>((r) => s.once('close', () => r())));
      await Promise.race([Promise.all([ended(stdout), ended(stderr)]), delay(200)]);
    }
    for (let i = 0; i < 50; i += 1) {
      const before = this.outputTicks;
      await new Promise<void>((r) => setImmediate(r));
      if (this.outputTicks === before) return;
    }
  }

  /** SIGTERM to the whole process group, SIGKILL after `graceMs` if anything is left. */
  async terminate(graceMs: number): Promise<void> {
    const signal = (sig: NodeJS.Signals) => {
      try {
        process.kill(-this.pid, sig);
      } catch {
        // group already gone
      }
    };
    if (groupAlive(this.pid)) {
      signal('SIGTERM');
      const deadline = Date.now() + graceMs;
      while (groupAlive(this.pid) && Date.now() < deadline) await delay(25);
      if (groupAlive(this.pid)) signal('SIGKILL');
    }
    await Promise.race([this.exited, delay(1000)]);
  }

  /** Ends the shell's program (EOF on its stdin), then kills whatever the build left running in the group. */
  async close(graceMs: number): Promise<void> {
    this.child.stdin!.end();
    (this.child.stdio[3] as Writable).end();
    await Promise.race([this.exited, delay(2000)]);
    await this.terminate(graceMs);
    for (const s of this.child.stdio) s?.destroy();
    if (this.recordPath) await rm(this.recordPath, { force: true });
  }
}

/** A directory this process can enter (search permission). */
async function enterable(path: string): Promise<boolean> {
  try {
    if (!(await stat(path)).isDirectory()) return false;
    await access(path, fsConstants.X_OK);
    return true;
  } catch {
    return false;
  }
}

/**
 * A shell that could not be spawned (as the service's own user): the build's doing when its workspace is
 * no longer a directory the shell can enter (removed, replaced by a file or a link, its mode taken away),
 * whatever the error says (Node reports a missing working directory as `spawn <file> ENOENT`, as a
 * missing program); else the service's (the program by absolute path is missing, no processes left).
 */
async function whyNotStarted(err: unknown, opts: Pick<ShellProcessOptions, 'cwd'>): Promise<unknown> {
  if (await enterable(opts.cwd)) return err;
  return new ShellStartError(`it could not enter the workspace ${opts.cwd}: removed, or replaced by the build`, { cause: err });
}
