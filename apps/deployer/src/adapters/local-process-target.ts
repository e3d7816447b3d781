import { spawn, type ChildProcess } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { chmod, mkdir, open } from 'node:fs/promises';
import { join } from 'node:path';
import { ArtifactContentError, type ArtifactStore } from '@conveyor/artifacts';
import type { DeployJob } from '@conveyor/contracts';
import { asUserArgv, checkBash, removeTrees, spawnAsUser, UNEXPORTABLE_WHY, type BuildUser } from '@conveyor/runner';
import { freePort, PermanentJobError, type Logger } from '@conveyor/service-kit';
import { ownUser, type AppUsers } from './app-users.js';
import { childEnv } from '../domain/child-env.js';
import { APP_DIR, HOME_DIR, isSameVersion, localUrl, OUTPUT_FILE, supersededBy, versionName, type DeploymentRecord } from '../domain/deployment-record.js';
import { describeHealthFailure, waitHealthy, type ProbeVerdict } from '../domain/health-wait.js';
import { versionsToPrune } from '../domain/prune.js';
import { tailLines } from '../domain/tail.js';
import type { DeployContext, DeployOutcome, DeployTarget } from '../ports.js';
import type { DeploymentFiles } from './deployment-files.js';
import { probeHealth } from './http-health.js';
import { withPipelineLock, type HeldLock } from './pipeline-lock.js';
import { bootId, processStartTime } from '@conveyor/procfs';
import { portOwner, strangerOnPort } from './port-owner.js';
import { ownGroupAlive, stopGroup, unprovenMembers } from './process-group.js';

type LocalTargetConfig = Extract<DeployJob['target'], { kind: 'local' }>;

export interface LocalProcessTargetOptions {
  files: DeploymentFiles;
  artifacts: ArtifactStore;
  logger: Logger;
  /** Between SIGTERM and SIGKILL when stopping a version's process group. */
  stopGraceMs: number;
  /** Version directories kept per pipeline (the serving one is always kept). */
  keepVersions: number;
  hostEnv?: Record<string, string | undefined>;
  /** Who versions run as (default: the deployer's own user). */
  users?: AppUsers;
  healthIntervalMs?: number;
  now?: () => Date;
  /** The port a version is given as PORT (default: freePort, one nobody listens on now). */
  pickPort?: () => Promise<number>;
  /**
   * Tests only: awaited once the version's command has been let run, before the health wait begins (a
   * command that ends at once can be reaped meanwhile).
   */
  commandStarted?: (record: DeploymentRecord) => Promise<void>;
}

/**
 * Run by bash in front of every deployed command: a gate that lets the command run only once the
 * deployer has written the version's record. It waits for one line, `go`, on its stdin, a pipe only the
 * deployer holds; the deployer writes it after the record is on disk. A deployer that dies before (killed
 * between starting the version and recording it) closes the pipe by dying: the gate reads end-of-file and
 * exits without running anything. So every command that ever ran has a record, which a re-delivery of
 * its job (discardEarlierDelivery) or the sweep finds and stops. Then stdin becomes /dev/null, as it
 * was, and the gate execs `bash -c <command>` (in the same process: pid, process group and start time
 * stay what the record says), `$0` as before. Constant text; the command comes as $1.
 *
 * The gate's bash runs with GATE_FLAGS: stdin is a socket (Node's pipes are socketpairs), which a plain
 * `bash -c` takes for an ssh session and so sources /etc/bash.bashrc and ~/.bashrc (which could move the
 * working directory, change PORT, start things before the record exists, or read the `go` line), and
 * BASH_ENV would run twice. --norc and --noprofile skip the startup files, --posix skips BASH_ENV; the
 * command's own `bash -c` starts as it always did (stdin /dev/null, not in posix mode: POSIXLY_CORRECT is
 * not exported). No exported function can stand in for the gate's builtins: variable names in a
 * target's env are plain identifiers, and the host passes on only PATH, HOME and LANG (childEnv).
 */
export const START_GATE = `IFS= read -r __cv_go
[ "$__cv_go" = go ] || { echo "[conveyor] not started: the deployer went away before recording this version" >&2; exit 1; }
unset __cv_go
exec </dev/null
exec -a "$0" "$BASH" -c "$1"`;

const GATE_FLAGS = ['--norc', '--noprofile', '--posix'] as const;

/** What the health probes of one deploy saw besides their verdicts, for the message of a wait that timed out. */
interface ProbeNotes {
  /** 200s with no socket listening on the port. */
  unowned: number;
  /** 200s for which /proc could not say who listens. */
  unreadable: number;
  lastError?: string;
}

interface Started {
  record: DeploymentRecord;
  exited: () => { code: number | null; signal: string | null } | undefined;
}

/** The deploy target of one machine: each version is a process group started from the unpacked artifact. */
export class LocalProcessTarget implements DeployTarget {
  readonly kind = 'local' as const;
  private readonly users: AppUsers;
  constructor(private readonly opts: LocalProcessTargetOptions) {
    this.users = opts.users ?? ownUser;
  }

  async deploy(job: DeployJob, ctx: DeployContext): Promise<DeployOutcome> {
    const target = job.target;
    if (target.kind !== 'local') throw new Error(`LocalProcessTarget cannot deploy to ${target.kind}`);
    return withPipelineLock(this.opts.files.root, job.pipeline, (lock) => this.deployLocked(job, target, ctx, lock), {
      signal: ctx.signal,
      onWait: (holder) => ctx.log(`waiting for the deploy lock of ${job.pipeline}${holder ? `, held by pid ${holder}` : ''}`),
    });
  }

  private async deployLocked(job: DeployJob, target: LocalTargetConfig, ctx: DeployContext, lock: HeldLock): Promise<DeployOutcome> {
    const { files } = this.opts;
    const current = await files.readCurrent(job.pipeline);
    if (current && isSameVersion(current, job.runId, job.attempt) && ownGroupAlive(current)) {
      return this.alreadyServing(job, target, current, ctx);
    }
    const version = versionName(job.runId, job.attempt);
    const dir = files.versionDir(job.pipeline, version);
    // A re-delivery of a job whose version went live and was replaced since (its deployer died before
    // completing the job): starting it again would put an older commit back over a newer one. Nothing
    // is touched, and the stage ends as a Monitor stage does on a replaced version, SUCCEEDED (the
    // deploy handler says why): this version did go live; a later run's then replaced it.
    const own = await files.readVersionRecord(dir);
    const newer = supersededBy(own, current);
    if (own && newer) {
      ctx.log(`this version went live once, and run ${newer.runId}'s version went live after it (${newer.url} serves); nothing started or stopped`);
      return { status: 'superseded', url: own.url, by: { runId: newer.runId, url: newer.url } };
    }
    // What the messages of a version that does not go live say about what serves.
    const kept = current && ownGroupAlive(current) ? 'the previous version keeps serving' : 'no earlier version of this pipeline is serving';
    await this.discardEarlierDelivery(job.pipeline, version, dir, ctx);
    try {
      return await this.deployVersion(job, target, ctx, lock, dir, kept);
    } finally {
      // Whatever the outcome: a pipeline that keeps failing must not keep every artifact and user id it
      // unpacked. Under the lock only: once lost, another deploy of the pipeline may be under way.
      if (!lock.lost()) await this.prune(job.pipeline, dir).catch((err: unknown) => this.opts.logger.warn({ err, pipeline: job.pipeline }, 'could not prune old versions'));
    }
  }

  /** A re-delivery after the swap was recorded: this version is live. */
  private async alreadyServing(job: DeployJob, target: LocalTargetConfig, current: DeploymentRecord, ctx: DeployContext): Promise<DeployOutcome> {
    // A failed probe now is the monitor stage's business, not a reason to restart what serves.
    const healthy = await probeHealth(`${current.url}${target.healthPath}`, 2000);
    ctx.log(`this version already serves ${current.url} (pid ${current.pid}${healthy ? '' : ', health probe failing'}); nothing started`);
    // Said again: the delivery that put it live may have died before saying it.
    await ctx.wentLive({ runId: current.runId, attempt: current.attempt, url: current.url });
    await this.stopOthers(job.pipeline, current, ctx);
    return { status: 'already-deployed', url: current.url };
  }

  /** Unpacks the version into `dir`, starts it, waits for its health, and swaps it in. `kept`: what serves if it does not go live. */
  private async deployVersion(job: DeployJob, target: LocalTargetConfig, ctx: DeployContext, lock: HeldLock, dir: string, kept: string): Promise<DeployOutcome> {
    const { files, logger } = this.opts;
    const user = await this.unpack(job, dir, kept, ctx);
    const started = await this.start(job, target, dir, user, ctx);
    const { record } = started;
    ctx.log(`started \`${target.command}\` as pid ${record.pid} on port ${record.port}; waiting for ${target.healthPath}`);
    await this.opts.commandStarted?.(record);
    const seen: ProbeNotes = { unowned: 0, unreadable: 0 };
    const outcome = await waitHealthy(
      {
        probe: (ms) => this.probeOwnAnswer(record, user?.uid, target.healthPath, ms, seen),
        exited: started.exited,
        sleep: (ms) => new Promise((r) => setTimeout(r, ms)),
        now: () => Date.now(),
        signal: ctx.signal,
      },
      { timeoutMs: target.healthTimeoutSeconds * 1000, intervalMs: this.opts.healthIntervalMs ?? 250, probeTimeoutMs: 2000 },
    );
    const output = await readTail(join(dir, OUTPUT_FILE), 64 * 1024);
    if (output) ctx.log(`--- output of the deployed command so far ---\n${output.replace(/\n?$/, '')}\n---`);
    if (outcome.kind !== 'healthy') {
      const stopped = await this.stopVersion(record);
      logger.warn({ pipeline: job.pipeline, pid: record.pid, outcome: outcome.kind, stopped }, 'deployed version never became healthy');
      if (outcome.kind === 'aborted') throw ctx.signal.reason instanceof Error ? ctx.signal.reason : new Error('deploy aborted');
      let why = describeHealthFailure(outcome, target.healthTimeoutSeconds, target.healthPath);
      if (outcome.kind === 'timeout' && seen.unowned > 0) {
        why += ` (it answered 200 ${seen.unowned} time(s), but no socket was listening on 127.0.0.1:${record.port} for it: the version must listen on PORT itself; a port a container publishes or a firewall rule forwards is not taken for the version's)`;
      }
      if (outcome.kind === 'timeout' && seen.unreadable > 0) {
        why += ` (it answered 200 ${seen.unreadable} time(s), but who listens on port ${record.port} could not be read: ${seen.lastError})`;
      }
      const last = tailLines(output);
      return { status: 'unhealthy', message: `${why}; ${kept}. Last output:\n${last || '(none)'}` };
    }
    // A 200 from a command that has already exited came from someone else (a daemonised copy, or
    // another process on the port): a deployment is a process group Conveyor can see and stop.
    if (!ownGroupAlive(record)) {
      await this.stopVersion(record);
      return { status: 'unhealthy', message: `the command's process group ended after ${target.healthPath} answered; a deployed command must keep running in the foreground; ${kept}` };
    }
    // The last moment to stop: past it, the new version replaces the live one.
    if (lock.lost()) {
      const stopped = await this.stopVersion(record);
      logger.error({ pipeline: job.pipeline, pid: record.pid, stopped }, 'deploy lock lost before the swap');
      return { status: 'unhealthy', message: `the deploy lock was lost (its holder process ended) before this version went live; it was stopped and ${kept}` };
    }
    let cancelled: boolean;
    try {
      cancelled = await ctx.cancelled();
    } catch (err) {
      // Unknown whether to go live: the new version must not be left running unrecorded.
      await this.stopVersion(record);
      throw err;
    }
    if (cancelled) {
      const stopped = await this.stopVersion(record);
      logger.info({ pipeline: job.pipeline, pid: record.pid, stopped }, 'run cancelled before its version went live');
      return { status: 'cancelled', message: `the run was cancelled before this version went live; it was stopped and ${kept}` };
    }
    const live: DeploymentRecord = { ...record, liveAt: (this.opts.now?.() ?? new Date()).toISOString() };
    // Its own record first: a re-delivery must know it went live once current.json may say so. (Marked
    // but never named, its deployer dying in between, it is not taken as replaced: see supersededBy.)
    await files.writeVersionRecord(dir, live);
    // Then current.json, then stop the old one: a crash in between leaves current.json naming a healthy version.
    await files.writeCurrent(live);
    ctx.log(`healthy after ${outcome.afterMs} ms; ${record.url} now serves ${job.pipeline}`);
    await ctx.wentLive({ runId: record.runId, attempt: record.attempt, url: record.url });
    await this.stopOthers(job.pipeline, live, ctx);
    return { status: 'deployed', url: record.url };
  }

  /**
   * Makes the version's directory, claims its user and unpacks the artifact into it. An artifact that
   * cannot be unpacked fails the stage once: unpacking it again would fail again.
   */
  private async unpack(job: DeployJob, dir: string, kept: string, ctx: DeployContext): Promise<BuildUser | undefined> {
    const { files } = this.opts;
    const appDir = join(dir, APP_DIR);
    // The directory first, then the claim: a claim without its directory is one a dead deploy left.
    // Closed from the start (handOver opens it to its user only): no other version's user may take a
    // handle on it while it is unpacked.
    await mkdir(dir, { recursive: true, mode: 0o700 });
    await chmod(dir, 0o700);
    const user = await this.users.claim(job.pipeline, versionName(job.runId, job.attempt));
    ctx.log(`unpacking artifact ${job.input.key} into ${appDir}`);
    try {
      await this.opts.artifacts.extractTo(job.input, appDir);
    } catch (err) {
      if (!(err instanceof ArtifactContentError)) throw err;
      // What was unpacked stays for a look until pruned, as a version that failed its health does.
      throw new PermanentJobError(`${err.message}; nothing was started and ${kept}`);
    }
    if (user) {
      // Its user may pass through (not list) the pipeline's directory, and enter its version's only.
      await chmod(files.pipelineDir(job.pipeline), 0o711);
      await this.users.handOver(dir, appDir, join(dir, HOME_DIR), user);
    }
    return user;
  }

  /**
   * Stops, in each pipeline, every version still running that current.json does not name: one a deploy
   * started and never finished (its deployer killed during the health wait, and the job then cancelled
   * or failed for stalling), which no later deploy would stop unless it succeeded. Under each
   * pipeline's deploy lock, so a deploy under way (here or in another deployer) is waited for, never
   * touched. Returns how many were stopped.
   */
  async sweepLeftovers(): Promise<number> {
    const { files, logger } = this.opts;
    let stopped = 0;
    await Promise.all(
      (await files.pipelines()).map((pipeline) =>
        withPipelineLock(files.root, pipeline, async () => {
          const current = await files.readCurrent(pipeline);
          for (const v of await files.versions(pipeline)) {
            const rec = await files.readVersionRecord(join(files.pipelineDir(pipeline), v.name));
            if (!rec || (current && isSameVersion(current, rec.runId, rec.attempt))) continue;
            if (ownGroupAlive(rec)) {
              const result = await this.stopVersion(rec);
              stopped++;
              logger.warn({ pipeline, runId: rec.runId, attempt: rec.attempt, pid: rec.pid, result }, 'stopped a version left running by a deploy that never finished');
            } else {
              // Its group is gone; a daemon it left as its user is not.
              await this.users.stopAll(pipeline, v.name);
            }
          }
        }),
      ),
    );
    return stopped;
  }

  /**
   * Stops every version of the pipeline but `keep`: the one it replaces, and any a crash or a failed
   * last attempt left running (the deploy lock makes this the only deploy of the pipeline under way).
   */
  private async stopOthers(pipeline: string, keep: DeploymentRecord, ctx: DeployContext): Promise<void> {
    for (const v of await this.opts.files.versions(pipeline)) {
      const rec = await this.opts.files.readVersionRecord(join(this.opts.files.pipelineDir(pipeline), v.name));
      if (rec && rec.pgid !== keep.pgid) await this.stopPrevious(rec, ctx);
    }
  }

  /**
   * A previous delivery of this job may have died with its version running: stop it, start clean. Its
   * record is there: START_GATE runs no command before its record is written.
   */
  private async discardEarlierDelivery(pipeline: string, version: string, dir: string, ctx: DeployContext): Promise<void> {
    const leftover = await this.opts.files.readVersionRecord(dir);
    if (leftover && ownGroupAlive(leftover)) {
      ctx.log(`stopping pid ${leftover.pid} left by an earlier delivery of this job`);
      await stopGroup(leftover, this.opts.stopGraceMs);
    }
    // Whatever else of that delivery still runs as the version's user goes too, before root touches its files.
    if (!(await this.users.stopAll(pipeline, version))) throw new Error(`processes of an earlier delivery of ${pipeline}/${version} survived being killed; trying again later`);
    await removeTree(dir);
  }

  /** Stops a version's process group, then anything else still running as its user (a daemon that left the group). */
  private async stopVersion(record: DeploymentRecord): Promise<Awaited<ReturnType<typeof stopGroup>>> {
    const stopped = await stopGroup(record, this.opts.stopGraceMs);
    if (!(await this.users.stopAll(record.pipeline, versionName(record.runId, record.attempt)))) {
      this.opts.logger.warn({ pipeline: record.pipeline, runId: record.runId }, "processes of a stopped version's user survived being killed; its files and user id are kept until a later clean-up finds nothing of it running");
    }
    // Its leader gone, processes of its group number whose environment no longer shows its mark cannot be
    // told from a stranger's (process-group.ts): left alone, and named (a version run as a user of its own
    // lost none: stopAll above stopped everything of that user).
    const unproven = unprovenMembers(record);
    if (unproven.length) {
      this.opts.logger.warn({ pipeline: record.pipeline, runId: record.runId, pgid: record.pgid, pids: unproven }, "processes of a stopped version's process group number show no mark of the version (exec'd with another environment, say): not signalled, as they cannot be told from another program's; stop them by hand if they are the version's");
    }
    return stopped;
  }

  /**
   * One health probe whose 200 counts only if the version itself answered it. Who listens on the port is
   * read from /proc (every socket listening where a connection to 127.0.0.1:<port> may land: on
   * 127.0.0.1, 0.0.0.0, ::, or their IPv4-mapped forms) only after a 200, so a wait costs nothing more:
   * - a socket there that no process of the version's group holds (nor, for a version with a user of its own,
   *   any process of that user): another process has the port (it
   *   took it between the pick and the version's bind, or the version listens elsewhere): refused, for
   *   good (the version cannot get the port while that socket stays);
   * - nothing there any more: this 200 does not count (the next one is checked again);
   * - all the version's: one more probe, then /proc read again. The 200 counts when that probe answered
   *   200 too and the same sockets, all the version's, listened just before and just after it: no other
   *   process can have answered it.
   * Off Linux (no /proc) a 200 counts as it is.
   */
  private async probeOwnAnswer(record: DeploymentRecord, ownUid: number | undefined, healthPath: string, ms: number, seen: ProbeNotes): Promise<ProbeVerdict> {
    const url = `${record.url}${healthPath}`;
    if (!(await probeHealth(url, ms))) return false;
    const before = this.whoListens(record, ownUid, healthPath, seen);
    if (typeof before !== 'string') return before;
    if (!(await probeHealth(url, ms))) return false;
    const after = this.whoListens(record, ownUid, healthPath, seen);
    if (typeof after !== 'string') return after;
    return after === before;
  }

  /**
   * The inodes of the sockets listening on the version's port when they are all its own; otherwise the
   * probe's verdict. `seen.unowned` counts the 200s for which nothing listened there.
   */
  private whoListens(record: DeploymentRecord, ownUid: number | undefined, healthPath: string, seen: ProbeNotes): string | ProbeVerdict {
    let owner: ReturnType<typeof portOwner>;
    try {
      owner = portOwner(record.port, record, ownUid);
    } catch (err) {
      // /proc/net/tcp unreadable for a moment (EMFILE, say): this 200 does not count, the next is checked
      // again; said once in the log, and in the deploy's message if the wait then times out.
      if (seen.unreadable++ === 0) this.opts.logger.warn({ err, pipeline: record.pipeline, port: record.port }, "could not read who listens on a deployed version's port");
      seen.lastError = (err as Error).message;
      return false;
    }
    switch (owner.kind) {
      case 'version':
        return owner.sockets;
      case 'unknown':
        return true;
      case 'nobody':
        seen.unowned += 1;
        return false;
      case 'stranger':
        this.opts.logger.warn({ pipeline: record.pipeline, runId: record.runId, port: record.port, strangerPid: owner.pid, strangerUid: owner.uid }, "another process answered on a deployed version's port");
        return { refused: strangerOnPort(record.port, healthPath, owner) };
    }
  }

  /**
   * Starts the version's command behind START_GATE and records it: the command runs only once its
   * record is on disk (see START_GATE), so a deployer killed at any moment of this leaves nothing running
   * that a re-delivery of the job cannot find.
   */
  private async start(job: DeployJob, target: LocalTargetConfig, dir: string, user: BuildUser | undefined, ctx: DeployContext): Promise<Started> {
    const port = await (this.opts.pickPort ?? freePort)();
    const host = this.opts.hostEnv ?? process.env;
    // A version with a user of its own gets a home of its own; the deployer's is not its to write.
    const deployMark = randomUUID();
    const env = childEnv({ host: user ? { ...host, HOME: join(dir, HOME_DIR) } : host, target: target.env, port, runId: job.runId, commit: job.commit, deployMark });
    const appDir = join(dir, APP_DIR);
    const out = await open(join(dir, OUTPUT_FILE), 'a', 0o600);
    let child: ChildProcess;
    let spawnFailed: Promise<Error> | undefined;
    let procStart: string | undefined;
    try {
      // The command is the pipeline author's own text, run as written (by `bash -c`, behind the gate);
      // run values reach it only through env. stdin: the gate's pipe.
      if (user) {
        // As its user: root's programs start with PATH alone and the environment reaches the app through
        // the loader (a target.env LD_PRELOAD must not run in setpriv, as root).
        const bash = checkBash();
        const started = spawnAsUser(asUserArgv(user, appDir, [bash, ...GATE_FLAGS, '-c', START_GATE, bash, target.command]), env, { rootCwd: dir, stdio: ['pipe', out.fd, out.fd] });
        child = started.child;
        if (started.unexportable.length) ctx.log(`not passed to the deployed command: ${started.unexportable.join(', ')} (${UNEXPORTABLE_WHY})`);
      } else {
        child = spawn('bash', [...GATE_FLAGS, '-c', START_GATE, 'bash', target.command], { cwd: appDir, env, detached: true, stdio: ['pipe', out.fd, out.fd] });
      }
      // Before any await: a spawn that fails says so on the next tick, and an event nobody listens for is lost.
      spawnFailed = child.pid === undefined ? new Promise<Error>((resolve) => child.once('error', resolve)) : undefined;
      // Now too: the gate cannot have ended yet (it waits for us), nor been reaped.
      if (child.pid !== undefined) procStart = processStartTime(child.pid);
    } finally {
      await out.close();
    }
    const pid = child.pid;
    if (pid === undefined) throw new Error(`could not start bash: ${(await spawnFailed!).message}`);
    child.on('error', (err) => this.opts.logger.warn({ err, pid }, 'deployed process error'));
    const gate = child.stdin!;
    gate.on('error', () => undefined); // EPIPE: the gate ended first (setpriv refused, say): its exit says so
    // Detached and unreferenced: deployed versions outlive the deployer.
    child.unref();
    const record: DeploymentRecord = {
      pipeline: job.pipeline,
      runId: job.runId,
      attempt: job.attempt,
      pid,
      pgid: pid,
      port,
      url: localUrl(port),
      commit: job.commit,
      startedAt: (this.opts.now?.() ?? new Date()).toISOString(),
      procStart,
      bootId: bootId(),
      mark: deployMark,
    };
    try {
      await this.opts.files.writeVersionRecord(dir, record);
    } catch (err) {
      // Unrecorded, it must not run: the gate, closed without its line, ends without running the command.
      gate.destroy();
      await stopGroup(record, this.opts.stopGraceMs);
      throw err;
    }
    // Recorded: let it run.
    gate.end('go\n');
    // Read from the child, not from its 'exit' event: a command that ends at once (a missing config) can be
    // reaped while this awaited something, before any listener was there, and then a health wait that
    // listened for the event would wait out its whole timeout.
    const proc = child;
    return { record, exited: () => (proc.exitCode !== null || proc.signalCode !== null ? { code: proc.exitCode, signal: proc.signalCode } : undefined) };
  }

  private async stopPrevious(previous: DeploymentRecord, ctx: DeployContext): Promise<void> {
    if (!ownGroupAlive(previous)) {
      // Its group is gone; a daemon it left running as its user is not.
      await this.users.stopAll(previous.pipeline, versionName(previous.runId, previous.attempt));
      return;
    }
    const result = await this.stopVersion(previous);
    ctx.log(`stopped the previous version (run ${previous.runId}, attempt ${previous.attempt}, pid ${previous.pid}): ${result}`);
    this.opts.logger.info({ pipeline: previous.pipeline, pid: previous.pid, result }, 'stopped previous version');
  }

  /**
   * Deletes version directories beyond DEPLOY_KEEP_VERSIONS, the oldest first, never `keepDir` (the one
   * just deployed, live or with the output of its failure), the one current.json names, or one running.
   */
  private async prune(pipeline: string, keepDir: string): Promise<void> {
    const { files } = this.opts;
    const versions = await files.versions(pipeline);
    const current = await files.readCurrent(pipeline);
    // By name, not by whether it runs: what serves (or served last, if it died) is never deleted here.
    const protect = new Set<string>(current ? [versionName(current.runId, current.attempt)] : []);
    for (const v of versions) {
      const dir = join(files.pipelineDir(pipeline), v.name);
      const rec = await files.readVersionRecord(dir);
      if (dir === keepDir || (rec && ownGroupAlive(rec))) protect.add(v.name);
    }
    for (const name of versionsToPrune(versions, this.opts.keepVersions, protect)) {
      // Nothing may run as the version's user while root removes what it owns (a later prune tries again).
      if (!(await this.users.stopAll(pipeline, name))) continue;
      await removeTree(join(files.pipelineDir(pipeline), name));
      await this.users.release(pipeline, name);
    }
  }
}

/** Removes a version's directory (its user's files inside): GNU rm, which never follows a link swapped in meanwhile. */
async function removeTree(dir: string): Promise<void> {
  if (!(await removeTrees(dir))) throw new Error(`could not remove ${dir}`);
}

/** The last `bytes` of a file as text ('' when it does not exist). */
export async function readTail(path: string, bytes: number): Promise<string> {
  const fh = await open(path, 'r').catch(() => undefined);
  if (!fh) return '';
  try {
    const { size } = await fh.stat();
    const length = Math.min(size, bytes);
    const buf = Buffer.alloc(length);
    await fh.read(buf, 0, length, size - length);
    return buf.toString('utf8');
  } finally {
    await fh.close();
  }
}
