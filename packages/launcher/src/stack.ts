import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { isIP } from 'node:net';
import { chmod, mkdir, open, readFile, stat, writeFile } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { stopAllDeployments } from '@conveyor/deployer';
import { processIsOurs, processStartTime, tryHoldFileLock } from '@conveyor/procfs';
import { listenProblem } from '@conveyor/service-kit';
import { resolveRedis, type ResolvedRedis } from './redis.js';

export const REPO_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');

export const SERVICES = ['source-webhook', 'build', 'test-runner', 'deployer', 'monitor'] as const;
export type ServiceName = (typeof SERVICES)[number];

export interface StackOptions {
  /** Where data, logs and deployments live (default `<repo>/.conveyor`). */
  home: string;
  /** source-webhook listens here, the others on the next four ports. */
  portBase: number;
  env?: NodeJS.ProcessEnv;
  /** Extra variables for every service (e.g. shorter BullMQ lock times in tests). */
  serviceEnv?: Record<string, string>;
  /** Aborting it (Ctrl-C while the services start) stops what was started and rejects with its reason. */
  signal?: AbortSignal;
  /** Given, before the first service starts, what stops or kills the stack (a second Ctrl-C while it starts). */
  onHandle?: (handle: Pick<Stack, 'stop' | 'kill'>) => void;
  /** Lines for the person at the terminal (a leftover of a killed launcher waited for, say). */
  say?: (line: string) => void;
}

export interface Stack {
  redis: ResolvedRedis;
  apiToken: string;
  /** Where the API token came from. */
  apiTokenSource: string;
  urls: Record<ServiceName, string>;
  home: string;
  processes: Map<ServiceName, ChildProcess>;
  /** Starts one service (again), e.g. after a test killed it. */
  startService(name: ServiceName): Promise<ChildProcess>;
  /** Stops the services (each given its drain time), the deployed versions and a private Redis, then frees the home. */
  stop(): Promise<void>;
  /** At once, SIGKILL: the services, the deployed versions and a private Redis (a second Ctrl-C while stop() runs). */
  kill(): Promise<void>;
}

/** CONVEYOR_API_TOKEN, else the one in `<home>/api-token` (made on first use), with where it came from. */
async function apiToken(home: string, env: NodeJS.ProcessEnv): Promise<{ token: string; source: string }> {
  if (env.CONVEYOR_API_TOKEN) return { token: env.CONVEYOR_API_TOKEN, source: 'CONVEYOR_API_TOKEN' };
  const file = join(home, 'api-token');
  const existing = await readFile(file, 'utf8').then((s) => s.trim(), () => '');
  if (existing.length >= 16) return { token: existing, source: file };
  const token = randomBytes(24).toString('base64url');
  await writeFile(file, `${token}\n`, { mode: 0o600 });
  await chmod(file, 0o600);
  return { token, source: file };
}

/**
 * The services' settings a person may give the launcher (README's table), passed through as they are.
 * Not the rest of the caller's environment (cloud credentials and the like have no business in the
 * services), nor what the launcher decides itself: ports, directories under CONVEYOR_HOME, Redis, the token.
 */
export const PASSED_THROUGH = [
  /^WORKER_(CONCURRENCY|LOCK_MS|STALLED_MS)$/,
  /^SHUTDOWN_DRAIN_SECONDS$/,
  /^HOST$/,
  /^LOG_LEVEL$/,
  /^QUEUE_PREFIX$/,
  /^REDIS_FENCE$/,
  /^WEBHOOK_BODY_LIMIT$/,
  /^(ARTIFACT_MAX_BYTES|ARTIFACT_RETENTION_RUNS|ARTIFACT_DOWNLOADS_MAX|RUN_HISTORY_DAYS|RETENTION_INTERVAL_MS)$/,
  /^(RECONCILE_INTERVAL_MS|RESULTS_CLAIM_IDLE_MS|EVENTS_CLAIM_IDLE_MS)$/,
  /^BUILD_(UID|GID|UIDS|UID_LOCK_DIR|MAX_PROCESSES)$/,
  /^DEPLOY_(UIDS|UID_CLAIMS_DIR|MAX_PROCESSES|STOP_GRACE_SECONDS|KEEP_VERSIONS|OUTPUT_MAX_BYTES)$/,
  /^MONITOR_(HISTORY_MAX|HISTORY_DAYS|METRIC_KEYS_MAX)$/,
];

/** The variables of `env` the launcher hands to every service as they are. */
export function passedThrough(env: NodeJS.ProcessEnv): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [name, value] of Object.entries(env)) if (value !== undefined && PASSED_THROUGH.some((re) => re.test(name))) out[name] = value;
  return out;
}

/** Throws naming the first of `ports` something already listens on (another Conveyor, say). */
async function checkPortsFree(ports: readonly { port: number; name: string }[], host: string): Promise<void> {
  for (const { port, name } of ports) {
    const problem = await listenProblem(port, host);
    if (problem) throw new Error(`port ${port} (for ${name}) is ${problem}: another Conveyor or program listens there; stop it, or set CONVEYOR_PORT_BASE to another free range of five ports`);
  }
}

export async function waitReady(url: string, child: ChildProcess, name: string, logFile: string, signal?: AbortSignal): Promise<void> {
  const deadline = Date.now() + 60_000;
  while (Date.now() < deadline) {
    signal?.throwIfAborted();
    // Ended, by itself or killed by a signal (then its exitCode stays null).
    if (child.exitCode !== null || child.signalCode !== null) {
      // A service that cannot start says why in one line (explainStartupFailures): show it.
      const why = (await readFile(logFile, 'utf8').catch(() => '')).split('\n').find((line) => line.startsWith('✖ '));
      const how = child.signalCode ? `was killed by ${child.signalCode}` : `exited with code ${child.exitCode}`;
      throw new Error(`${name} ${how} before it was ready${why ? `: ${why.slice(2)}` : ''}; see ${logFile}`);
    }
    const ok = await fetch(`${url}/readyz`, { signal: AbortSignal.timeout(2000) }).then((r) => r.ok, () => false);
    if (ok) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`${name} not ready after 60 s; see ${logFile}`);
}

/**
 * Waits for `ready`. A child that never gets there is stopped (SIGTERM, then SIGKILL after `graceMs`)
 * before the error is passed on, so a start tried again does not leave this one running unwatched.
 */
export async function readyOrStopped(child: ChildProcess, ready: Promise<void>, graceMs: number): Promise<void> {
  try {
    await ready;
  } catch (err) {
    await stopProcess(child, graceMs);
    throw err;
  }
}

function stopProcess(child: ChildProcess, graceMs: number): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((done) => {
    const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
    child.once('exit', () => {
      clearTimeout(timer);
      done();
    });
    child.kill('SIGTERM');
  });
}

/** Starts Redis (if needed) and the five services as child processes; resolves when all are ready. */
export async function startStack(opts: StackOptions): Promise<Stack> {
  const env = opts.env ?? process.env;
  const home = resolve(opts.home);
  await makeHome(home, opts.say ?? (() => undefined));
  // One launcher per home: two would share its deployments, artifacts, queues and a private Redis's
  // data (two redis-servers on one AOF corrupt it), and either one's stop would stop the other's versions.
  // The lock file is the launcher's alone (0600): in a traversable home, anyone could otherwise hold it.
  const lockFile = join(home, 'launcher.lock');
  await writeFile(lockFile, '', { flag: 'a', mode: 0o600 });
  await chmod(lockFile, 0o600);
  const lock = await tryHoldFileLock(lockFile);
  if (!lock) {
    const holder = (await readFile(join(home, 'launcher.pid'), 'utf8').catch(() => '')).trim();
    throw new Error(`another Conveyor launcher${/^\d+$/.test(holder) ? ` (pid ${holder})` : ''} uses ${home}: stop it, or give this one a CONVEYOR_HOME (and a CONVEYOR_PORT_BASE) of its own`);
  }
  await writeFile(join(home, 'launcher.pid'), `${process.pid}\n`);
  try {
    return await startIn(home, opts, env, lock);
  } catch (err) {
    await lock.release();
    throw err;
  }
}

/**
 * The home, made if missing. It must be traversable by others (not readable: `o+x`): builds and deployed
 * versions run as users of their own and reach their directories through it, and a home they cannot
 * enter makes the services run them as themselves. mkdir's mode is cut by the umask, so it is set after;
 * a home of this user's that lacks it (every one an earlier launcher made: 0700) gets it, saying so.
 */
async function makeHome(home: string, say: (line: string) => void): Promise<void> {
  const made = await mkdir(home, { recursive: true, mode: 0o755 });
  if (made !== undefined) {
    // Each directory made on the way to it, too.
    for (let dir = home; dir.startsWith(made); dir = dirname(dir)) {
      await chmod(dir, 0o755);
      if (dir === made) break;
    }
    return;
  }
  const info = await stat(home);
  if (info.uid === process.getuid?.() && (info.mode & 0o011) !== 0o011) {
    await chmod(home, (info.mode & 0o7777) | 0o011);
    say(`  made ${home} traversable (g+x, o+x): builds and deployed versions run as users of their own and reach their directories through it`);
  }
}

/** The services a launcher started, recorded in its home, so that the next one finds those a killed launcher left draining. */
const SERVICES_FILE = 'services.json';

/**
 * Waits for the services a launcher that died without stopping them left running on this home: they
 * stop by themselves (their stdin closed) but drain first, on the home's directories and Redis. Past
 * `graceMs` they are killed. Only processes with the recorded start times: a pid reused since is not one.
 */
async function awaitLeftoverServices(home: string, graceMs: number, say: (line: string) => void): Promise<void> {
  let recorded: { pid: number; startTime?: string }[] = [];
  try {
    recorded = JSON.parse(await readFile(join(home, SERVICES_FILE), 'utf8')) as typeof recorded;
  } catch {
    return;
  }
  const alive = () => recorded.filter((r) => Number.isInteger(r.pid) && r.pid > 1 && r.startTime !== undefined && processIsOurs({ pid: r.pid, startTime: r.startTime }, { strict: true }));
  if (alive().length === 0) return;
  say(`  waiting for ${alive().length} service(s) a launcher that ended without stopping them left running on this home (pids ${alive().map((r) => r.pid).join(', ')})`);
  for (const deadline = Date.now() + graceMs; alive().length > 0 && Date.now() < deadline; ) await new Promise((r) => setTimeout(r, 200));
  for (const r of alive()) {
    try {
      process.kill(-r.pid, 'SIGKILL');
    } catch {
      // gone meanwhile
    }
  }
}

async function startIn(home: string, opts: StackOptions, env: NodeJS.ProcessEnv, lock: { release(): Promise<void> }): Promise<Stack> {
  const say = opts.say ?? (() => undefined);
  // The services' logs and temporary files are theirs alone: builds and deployed versions run as other
  // users on this host. A private TMPDIR also keeps the services' code (tsx's transform cache lives in
  // it) out of a world-writable /tmp, where a pipeline user could plant a directory before root made it.
  const logs = join(home, 'logs');
  const tmp = join(home, 'tmp');
  for (const dir of [logs, tmp]) {
    await mkdir(dir, { recursive: true, mode: 0o700 });
    await chmod(dir, 0o700);
  }
  // A service is stopped after its drain (SHUTDOWN_DRAIN_SECONDS, 20 by default) and the cancel of what
  // still runs after it: killed only once both had their time.
  const passed = passedThrough(env);
  const settings = { ...passed, ...opts.serviceEnv };
  const drainSeconds = Number(settings.SHUTDOWN_DRAIN_SECONDS ?? 20);
  const graceMs = ((Number.isFinite(drainSeconds) && drainSeconds >= 0 ? drainSeconds : 20) + 15) * 1000;
  await awaitLeftoverServices(home, graceMs, say);
  opts.signal?.throwIfAborted();
  const port = (i: number) => opts.portBase + i;
  // An address, not a name: some shells (tcsh) export HOST as the machine's name, which would open the
  // services to the network without anyone asking.
  const host = env.HOST && isIP(env.HOST) ? env.HOST : '127.0.0.1';
  await checkPortsFree(SERVICES.map((name, i) => ({ port: port(i), name })), host);
  const redis = await resolveRedis(env, join(home, 'redis'));
  const processes = new Map<ServiceName, ChildProcess>();
  // The register of deploy user ids the deployer was given (else the default, as the deployer's).
  const claimsDir = settings.DEPLOY_UID_CLAIMS_DIR;
  let closed = false;
  let stopped: Promise<void> | undefined;
  /** Each step is tried whatever the one before did; the home is freed last, in any case. */
  const stop = () =>
    (stopped ??= (async () => {
      closed = true;
      const failures: unknown[] = [];
      const attempt = async (step: () => Promise<unknown>) => {
        try {
          await step();
        } catch (err) {
          failures.push(err);
        }
      };
      try {
        await attempt(() => Promise.all([...processes.values()].map((p) => stopProcess(p, graceMs))));
        await attempt(() => stopAllDeployments(join(home, 'deployments'), undefined, claimsDir ? { claimsDir } : {}));
        if (redis.process) await attempt(() => stopProcess(redis.process!, 5000));
      } finally {
        await lock.release();
      }
      if (failures.length) throw new AggregateError(failures, `stopping left something undone: ${failures.map((e) => (e instanceof Error ? e.message : String(e))).join('; ')}`);
    })());
  const kill = async () => {
    closed = true;
    for (const p of [...processes.values(), ...(redis.process ? [redis.process] : [])]) {
      if (p.exitCode !== null || p.signalCode !== null || p.pid === undefined) continue;
      try {
        process.kill(-p.pid, 'SIGKILL');
      } catch {
        p.kill('SIGKILL');
      }
    }
    await stopAllDeployments(join(home, 'deployments'), 0, claimsDir ? { claimsDir } : {}).catch(() => undefined);
    await lock.release();
  };
  // From here on the caller can stop or kill what is started (a signal while the services start).
  opts.onHandle?.({ stop, kill });
  try {
    opts.signal?.throwIfAborted();
    const { token, source: tokenSource } = await apiToken(home, env);
    // Where the launcher reaches them: a wildcard address is reached on loopback.
    const reach = host === '0.0.0.0' || host === '::' ? '127.0.0.1' : host.includes(':') ? `[${host}]` : host;
    const urls = Object.fromEntries(SERVICES.map((s, i) => [s, `http://${reach}:${port(i)}`])) as Record<ServiceName, string>;
    const common: Record<string, string> = {
      PATH: env.PATH ?? '/usr/bin:/bin',
      HOME: env.HOME ?? home,
      QUEUE_PREFIX: 'conveyor',
      LOG_LEVEL: 'info',
      ...passed,
      HOST: host,
      REDIS_URL: redis.url,
      ARTIFACT_DIR: join(home, 'artifacts'),
      TMPDIR: tmp,
      ...opts.serviceEnv,
    };
    const own: Record<ServiceName, Record<string, string>> = {
      // The API token goes only to the services that check it; builds and tests never see it.
      'source-webhook': { PORT: String(port(0)), SOURCE_CACHE_DIR: join(home, 'source-cache'), CONVEYOR_API_TOKEN: token },
      build: { PORT: String(port(1)), WORK_DIR: join(home, 'work', 'build') },
      'test-runner': { PORT: String(port(2)), WORK_DIR: join(home, 'work', 'test') },
      deployer: { PORT: String(port(3)), DEPLOY_DIR: join(home, 'deployments'), CONVEYOR_API_TOKEN: token },
      monitor: { PORT: String(port(4)), CONVEYOR_API_TOKEN: token },
    };
    const record = () =>
      writeFile(
        join(home, SERVICES_FILE),
        JSON.stringify([...processes.values()].flatMap((p) => (p.pid === undefined ? [] : [{ pid: p.pid, startTime: processStartTime(p.pid) }]))),
        { mode: 0o600 },
      );

    const startService = async (name: ServiceName) => {
      if (closed) throw new Error(`${name} not started: the launcher is stopping`);
      const logFile = join(home, 'logs', `${name}.log`);
      // The service writes its log itself (stdout and stderr on the file): what it says after the
      // launcher is gone (a killed launcher's services drain, then stop) still reaches it.
      const log = await open(logFile, 'a', 0o600);
      let child: ChildProcess;
      try {
        await log.chmod(0o600); // one made before logs were private
        if (closed) throw new Error(`${name} not started: the launcher is stopping`);
        child = spawn(process.execPath, ['--import', 'tsx', join(REPO_ROOT, 'apps', name, 'src', 'main.ts')], {
          cwd: REPO_ROOT,
          // CONVEYOR_STOP_WITH_STDIN: its stdin is a pipe only the launcher holds; a launcher that dies without
          // stopping it (SIGKILL, a crash) closes it, and the service then stops as on SIGTERM.
          env: { ...common, ...own[name], CONVEYOR_STOP_WITH_STDIN: '1' },
          stdio: ['pipe', log.fd, log.fd],
          // Own process group: Ctrl-C reaches the launcher only, which then stops each service in order.
          detached: true,
        });
      } finally {
        await log.close();
      }
      child.stdin!.on('error', () => undefined); // EPIPE: it ended first, its exit says so
      processes.set(name, child);
      await record();
      await readyOrStopped(child, waitReady(urls[name], child, name, logFile, opts.signal), 5000);
      return child;
    };

    await Promise.all(SERVICES.map(startService));
    // Interrupted while the last one answered its readiness check: what started is stopped all the same.
    opts.signal?.throwIfAborted();
    return { redis, apiToken: token, apiTokenSource: tokenSource, urls, home, processes, startService, stop, kill };
  } catch (err) {
    // The start's own error is the one to tell; a stop that failed too is said after it.
    await stop().catch((stopErr: unknown) => say(`✖ ${(stopErr as Error).message}`));
    throw err;
  }
}
