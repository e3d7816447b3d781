import { randomUUID } from 'node:crypto';
import { chmod, mkdir, rm, stat } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import type { PhaseOutcome } from '@conveyor/contracts';
import { PHASE_NAMES, type Buildspec, type PhaseName } from './buildspec-schema.js';
import { ControlFiles } from './control-files.js';
import { replaceableBy } from './safe-files.js';
import { matchesWithin, parseOnFailure, type OnFailurePolicy } from './on-failure.js';
import { NAMESPACE_NOT_SET_UP } from './build-namespace.js';
import { CANNOT_ENTER_WORKSPACE, environmentProblem, ShellProcess, ShellStartError, type BuildUser, type ShellKind } from './shell-process.js';
import { BUILD_MARK, killMarked } from './orphans.js';

export type BuildStatus = 'SUCCEEDED' | 'FAILED' | 'TIMED_OUT' | 'STOPPED';
export type CommandBlock = 'commands' | 'finally';

/** Progress of a build, for logs and dashboards (the commands' own output goes to onOutput). */
export type RunnerEvent =
  | { type: 'phase-start'; phase: PhaseName; attempt: number }
  | { type: 'phase-end'; phase: PhaseName; status: PhaseOutcome['status']; durationMs: number; message?: string }
  | { type: 'command-start'; phase: PhaseName; block: CommandBlock; index: number; command: string }
  | { type: 'command-end'; phase: PhaseName; block: CommandBlock; index: number; exitCode: number; durationMs: number }
  | { type: 'notice'; message: string };

export interface RunPhasesOptions {
  /** Directory the commands run in (CODEBUILD_SRC_DIR). Must exist. */
  workspace: string;
  /** The build's environment (see codebuildEnv). PATH, HOME and LANG come from this process unless given. */
  env: Record<string, string>;
  /** What the commands print, stdout and stderr as one stream, in the order written, as it comes. */
  onOutput?: (chunk: string) => void;
  onEvent?: (event: RunnerEvent) => void;
  /** Whole-build limit; on expiry the process group is killed and the result is TIMED_OUT. */
  timeoutMs?: number;
  /** Aborting stops the build: the process group is killed and the result is STOPPED. */
  signal?: AbortSignal;
  /**
   * Private directory for the control files; default `<workspace>.ctl` beside the workspace. Must not
   * exist yet, nor be inside a directory the build's user may write (its job directory, say).
   */
  controlDir?: string;
  /**
   * Run the shells as this user (the worker must be root). The workspace must already belong to it;
   * the control directory stays the worker's, and the user is given the files in it one by one.
   */
  user?: BuildUser;
  /** With a user: the build's temporary directory (its user's), mounted as its /tmp and /var/tmp where it can be. */
  tmpDir?: string;
  /** With a user: the build's shared memory directory (its user's), mounted as its /dev/shm where it can be. */
  shmDir?: string;
  /** Time between SIGTERM and SIGKILL when stopping a process group. Default 5000. */
  killGraceMs?: number;
}

/** Where the build first failed. */
export interface CommandFailure {
  phase: PhaseName;
  block: CommandBlock;
  index: number;
  /** Exit status of the command (128+n when killed by signal n). */
  exitCode: number;
  command: string;
  message: string;
}

/** Returned by runPhases. */
export interface PhasesResult {
  status: BuildStatus;
  phases: PhaseOutcome[];
  /** env.exported-variables as they stood at the end of the last phase that ran. */
  exportedVariables: Record<string, string>;
  failure?: CommandFailure;
  /** One line saying why the build did not succeed. */
  message?: string;
  durationMs: number;
}

const MAX_PHASE_OUTPUT = 1024 * 1024;

function shellOf(spec: Buildspec): ShellKind {
  const shell = spec.env?.shell ?? 'bash';
  if (shell !== 'bash' && shell !== '/bin/sh') throw new Error(`env.shell: ${shell} is not supported; use bash or /bin/sh`);
  return shell;
}

/** Only what the caller gives, plus the few variables a shell needs to work at all. */
function shellEnv(given: Record<string, string>): Record<string, string> {
  const base: Record<string, string> = {};
  for (const key of ['PATH', 'HOME', 'LANG'] as const) {
    const v = process.env[key];
    if (v !== undefined) base[key] = v;
  }
  return { ...base, ...given };
}

function describe(phase: PhaseName, block: CommandBlock, index: number, ran: CommandRun, command: string): string {
  const text = command.length > 200 ? `${command.slice(0, 200)}…` : command;
  const how = ran.notRun ? `did not run, as the build shell could not be started (${ran.notRun})` : ran.shellDied ? `exited the shell with code ${ran.exitCode}` : `exited with code ${ran.exitCode}`;
  return `phases.${phase}.${block}[${index}] ${how}: ${text.trim()}`;
}

/** What running one command came to. */
interface CommandRun {
  exitCode: number;
  /** The command took the shell down (or there was none to run it). */
  shellDied: boolean;
  /** Why no shell could be started to run the command (which then did not run). */
  notRun?: string;
}

/** The exit status given to a command for which no shell could be started at all (spawn failed): a shell's "cannot run". */
const NOT_STARTED = 127;

/** Why a fresh shell that ended before running anything, with `code`, could not be started. */
function notStartedWhy(code: number, workspace: string): string {
  const why =
    code === CANNOT_ENTER_WORKSPACE
      ? `it could not enter the workspace ${workspace}: removed, or replaced by the build`
      : code === NAMESPACE_NOT_SET_UP
        ? 'its namespace could not be set up'
        : code === 126 || code === 127
          ? 'its program could not be run'
          : 'it ended before running anything';
  return `${why}; exit status ${code}`;
}

/** One build: a shell (replaced if a command kills it) and the phase rules of buildspec 0.2. */
class BuildSession {
  private readonly mark = randomUUID();
  private shell?: ShellProcess;
  private readonly shells: ShellProcess[] = [];
  /** CODEBUILD_BUILD_SUCCEEDING: false once a command has failed the build (see runPhaseOnce). */
  private succeeding = true;
  private stopReason?: 'TIMED_OUT' | 'STOPPED';
  private stopping?: Promise<void>;
  /** The current phase's output, kept only while its on-failure may need to match it. */
  private phaseOutput = '';
  private collectOutput = false;
  private firstFailure?: CommandFailure;

  constructor(
    private readonly spec: Buildspec,
    private readonly opts: RunPhasesOptions,
    private readonly files: ControlFiles,
  ) {}

  private emit(event: RunnerEvent): void {
    this.opts.onEvent?.(event);
  }

  private onOutput = (chunk: string): void => {
    if (this.collectOutput) this.phaseOutput = (this.phaseOutput + chunk).slice(-MAX_PHASE_OUTPUT);
    this.opts.onOutput?.(chunk);
  };

  stop(reason: 'TIMED_OUT' | 'STOPPED'): void {
    if (this.stopReason) return;
    this.stopReason = reason;
    this.stopping = Promise.all(this.shells.map((s) => s.terminate(this.opts.killGraceMs ?? 5000))).then(() => {});
  }

  /**
   * The shell, or a fresh one if it has ended; or why none could be started when the build made it so
   * (its workspace or control directory removed: ShellStartError): a failed command then, never an
   * exception that would error the job (and have it run again). The service's own faults (no processes
   * or files left, a tool missing) still error the job, which is tried again.
   */
  private async liveShell(): Promise<ShellProcess | { notStarted: string }> {
    if (this.shell?.alive) return this.shell;
    if (this.shell) this.emit({ type: 'notice', message: 'the shell exited; starting a fresh shell (variables and working directory are reset)' });
    try {
      this.shell = await ShellProcess.start({
        shell: shellOf(this.spec),
        cwd: this.opts.workspace,
        env: { ...shellEnv(this.opts.env), [BUILD_MARK]: this.mark },
        controlDir: this.files.dir,
        index: this.shells.length,
        onOutput: this.onOutput,
        ...(this.opts.user ? { user: this.opts.user } : {}),
        ...(this.opts.tmpDir ? { tmpDir: this.opts.tmpDir } : {}),
        ...(this.opts.shmDir ? { shmDir: this.opts.shmDir } : {}),
      });
    } catch (err) {
      this.shell = undefined;
      // Only what the build did to itself fails its command; the service's own faults error the job.
      if (!(err instanceof ShellStartError)) throw err;
      const notStarted = (err as Error).message;
      this.onOutput(`[conveyor] the build shell could not be started: ${notStarted}\n`);
      return { notStarted };
    }
    this.shells.push(this.shell);
    if (this.stopReason) await this.shell.terminate(0);
    return this.shell;
  }

  /** Runs one command; returns its exit status, whether it took the shell down, and why it did not run. */
  private async runCommand(command: string): Promise<CommandRun> {
    for (;;) {
      const shell = await this.liveShell();
      if (!(shell instanceof ShellProcess)) return { exitCode: NOT_STARTED, shellDied: true, notRun: shell.notStarted };
      const answered = shell.answered;
      const flag = await shell.send(await this.files.succeeding(this.succeeding ? '1' : '0'));
      if (flag.kind === 'exited') {
        // A shell that had run commands and ends before this one begins was left unable to go on by an
        // earlier command (a disabled builtin, a read-only CODEBUILD_BUILD_SUCCEEDING): the command has not
        // run, and runs in a fresh shell, as what follows a command that ends the shell does. A fresh shell
        // that ends so never came up (its workspace is gone, say): the command fails, saying why.
        if (answered) continue;
        return { exitCode: flag.code === 0 ? 1 : flag.code, shellDied: true, notRun: notStartedWhy(flag.code, this.opts.workspace) };
      }
      const r = await shell.send(await this.files.command(command));
      return { exitCode: r.code, shellDied: r.kind === 'exited' };
    }
  }

  private async runBlock(phase: PhaseName, block: CommandBlock, commands: readonly string[]): Promise<CommandFailure | undefined> {
    for (const [index, command] of commands.entries()) {
      if (this.stopReason) return undefined;
      this.emit({ type: 'command-start', phase, block, index, command });
      const started = Date.now();
      const ran = await this.runCommand(command);
      const { exitCode } = ran;
      this.emit({ type: 'command-end', phase, block, index, exitCode, durationMs: Date.now() - started });
      if (this.stopReason) return undefined;
      if (exitCode !== 0) return { phase, block, index, exitCode, command, message: describe(phase, block, index, ran, command) };
    }
    return undefined;
  }

  /**
   * commands, then finally (always); the first failure of either fails the phase. A failed command
   * fails the build there and then (finally already sees CODEBUILD_BUILD_SUCCEEDING=0), unless the
   * phase may still be retried (`retryLeft`): a retry that succeeds leaves the build succeeding.
   */
  private async runPhaseOnce(phase: PhaseName, retryLeft: boolean): Promise<CommandFailure | undefined> {
    const def = this.spec.phases[phase]!;
    const failed = await this.runBlock(phase, 'commands', def.commands ?? []);
    if (failed && !retryLeft) this.succeeding = false;
    const finallyFailed = this.stopReason ? undefined : await this.runBlock(phase, 'finally', def.finally ?? []);
    return failed ?? finallyFailed;
  }

  /** Runs a phase, retrying as its on-failure says; returns its outcome and failure, if any. */
  private async runPhase(phase: PhaseName, policy: OnFailurePolicy | undefined): Promise<{ outcome: PhaseOutcome; failure?: CommandFailure }> {
    const started = Date.now();
    let attempt = 1;
    let failure: CommandFailure | undefined;
    this.collectOutput = policy?.kind === 'RETRY';
    for (;;) {
      this.phaseOutput = '';
      this.emit({ type: 'phase-start', phase, attempt });
      const retryLeft = policy?.kind === 'RETRY' && attempt <= policy.retries;
      failure = await this.runPhaseOnce(phase, retryLeft);
      if (!failure || this.stopReason || !retryLeft) break;
      if (!matchesWithin(policy.pattern, `${this.phaseOutput}\n${failure.message}`)) break;
      this.emit({ type: 'notice', message: `${failure.message}; retrying phase ${phase} (retry ${attempt} of ${policy.retries})` });
      attempt += 1;
    }
    const durationMs = Date.now() - started;
    const tries = attempt > 1 ? ` (after ${attempt} attempts)` : '';
    let outcome: PhaseOutcome;
    if (this.stopReason) outcome = { name: phase, status: 'FAILED', durationMs, message: this.stopMessage() };
    else if (failure) outcome = { name: phase, status: 'FAILED', durationMs, message: `${failure.message}${tries}` };
    else outcome = { name: phase, status: 'SUCCEEDED', durationMs };
    this.emit({ type: 'phase-end', phase, status: outcome.status, durationMs, ...(outcome.message ? { message: outcome.message } : {}) });
    return { outcome, failure: this.stopReason ? undefined : failure };
  }

  private stopMessage(): string {
    return this.stopReason === 'TIMED_OUT' ? `build timed out after ${this.opts.timeoutMs} ms` : 'build stopped';
  }

  /**
   * The phase transitions of CodeBuild: a failed install or pre_build skips every later phase; a
   * failed build still runs post_build (with CODEBUILD_BUILD_SUCCEEDING=0). on-failure ABORT skips
   * everything after the phase; CONTINUE runs the next phases as if nothing had failed (the build
   * still ends FAILED); RETRY re-runs the phase and, once out of retries, follows the transitions.
   */
  private skipsAfterFailure(phase: PhaseName, policy: OnFailurePolicy | undefined): 'none' | 'all' {
    if (policy?.kind === 'CONTINUE') return 'none';
    if (policy?.kind === 'ABORT') return 'all';
    return phase === 'build' ? 'none' : 'all';
  }

  async run(): Promise<Omit<PhasesResult, 'durationMs' | 'exportedVariables'>> {
    const phases: PhaseOutcome[] = [];
    let skipRest = false;
    for (const phase of PHASE_NAMES) {
      const def = this.spec.phases[phase];
      if (!def) continue;
      if (skipRest || this.stopReason) {
        phases.push({ name: phase, status: 'SKIPPED', durationMs: 0 });
        this.emit({ type: 'phase-end', phase, status: 'SKIPPED', durationMs: 0 });
        continue;
      }
      const policy = def['on-failure'] === undefined ? undefined : parseOnFailure(def['on-failure']);
      const { outcome, failure } = await this.runPhase(phase, policy);
      phases.push(outcome);
      if (!failure) continue;
      this.succeeding = false;
      this.firstFailure ??= failure;
      if (this.skipsAfterFailure(phase, policy) === 'all') skipRest = true;
    }
    if (this.stopReason) return { status: this.stopReason, phases, message: this.stopMessage() };
    if (phases.some((p) => p.status === 'FAILED')) {
      return { status: 'FAILED', phases, failure: this.firstFailure, message: this.firstFailure?.message };
    }
    return { status: 'SUCCEEDED', phases };
  }

  /** env.exported-variables as they stand now (a fresh shell sees only the environment). */
  async exported(): Promise<Record<string, string>> {
    const names = (this.spec.env?.['exported-variables'] ?? []).filter((n) => !n.startsWith('AWS_'));
    if (names.length === 0 || this.stopReason) return {};
    const shell = await this.liveShell();
    if (!(shell instanceof ShellProcess)) return {};
    const query = await this.files.exportQuery(names);
    const r = await shell.send(query.path);
    if (r.kind !== 'status' || r.code !== 0) return {};
    try {
      return await query.read();
    } catch (err) {
      this.emit({ type: 'notice', message: `env.exported-variables not captured: ${(err as Error).message}` });
      return {};
    }
  }

  async close(): Promise<void> {
    await this.stopping;
    await Promise.all(this.shells.map((s) => s.close(this.opts.killGraceMs ?? 5000)));
    // A daemon started with setsid left the process group; it still carries the build's mark.
    const killed = await killMarked(BUILD_MARK, this.mark);
    if (killed > 0) this.emit({ type: 'notice', message: `stopped ${killed} process(es) the build left running outside its process group` });
  }
}

/**
 * The control directory belongs to the worker, mode 0711: the build's user may open the files it is
 * given by name, but cannot list, add, rename or replace any. So nothing the worker (root) creates
 * or reads there can be a symlink or FIFO the build planted, and a shell record there is ours.
 * Nor may the user replace the directory itself: it must not sit where the user can write.
 */
async function prepareControlDir(opts: RunPhasesOptions): Promise<string> {
  const info = await stat(opts.workspace).catch(() => undefined);
  if (!info?.isDirectory()) throw new Error(`workspace ${opts.workspace} is not a directory`);
  const dir = opts.controlDir ?? join(dirname(opts.workspace), `${basename(opts.workspace)}.ctl`);
  const exposed = opts.user ? await replaceableBy(dirname(resolve(dir)), opts.user) : undefined;
  if (exposed) throw new Error(`control directory ${dir}: uid ${opts.user!.uid} may write ${exposed}, so it could replace the directory; put it elsewhere`);
  try {
    await mkdir(dir, { mode: 0o711 });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') {
      throw new Error(`control directory ${dir} already exists: another build uses this workspace, or a crashed one left it (see reapOrphans)`);
    }
    throw err;
  }
  await chmod(dir, 0o711); // whatever the umask: the shell must be able to reach its files
  return dir;
}

/**
 * Runs the phases of a buildspec in one shell process per build, as CodeBuild 0.2 does, so
 * variables and the working directory carry from command to command and phase to phase.
 * Does not check unsupportedFeatures: the caller decides what to refuse.
 */
export async function runPhases(spec: Buildspec, given: RunPhasesOptions): Promise<PhasesResult> {
  const started = Date.now();
  shellOf(spec);
  // The caller's to check (runBuildspecJob does, failing the build once): no shell could be given it.
  const problem = environmentProblem(given.env);
  if (problem) throw new Error(problem);
  // Absolute from here on: the shell runs elsewhere than this process, and reads its control files by path.
  const opts: RunPhasesOptions = { ...given, workspace: resolve(given.workspace) };
  for (const key of ['controlDir', 'tmpDir', 'shmDir'] as const) if (given[key] !== undefined) opts[key] = resolve(given[key]);
  const files = new ControlFiles(await prepareControlDir(opts), opts.user);
  const session = new BuildSession(spec, opts, files);
  const onAbort = () => session.stop('STOPPED');
  opts.signal?.addEventListener('abort', onAbort, { once: true });
  if (opts.signal?.aborted) session.stop('STOPPED');
  const timer = opts.timeoutMs === undefined ? undefined : setTimeout(() => session.stop('TIMED_OUT'), opts.timeoutMs);
  try {
    const result = await session.run();
    const exportedVariables = await session.exported();
    return { ...result, exportedVariables, durationMs: Date.now() - started };
  } finally {
    clearTimeout(timer);
    opts.signal?.removeEventListener('abort', onAbort);
    await session.close();
    await rm(files.dir, { recursive: true, force: true });
  }
}
