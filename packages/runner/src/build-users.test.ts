import { spawn, spawnSync } from 'node:child_process';
import { chmod, chown, copyFile, mkdir, mkdtemp, readFile, rm, stat, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { afterEach, beforeEach, describe, expect, it, onTestFinished } from 'vitest';
import { FsArtifactStore } from '@conveyor/artifacts';
import { BuildJob } from '@conveyor/contracts';
import { pidAlive, processesOfUser, tryHoldFileLock } from '@conveyor/procfs';
import { z } from 'zod';
import { BuildUserEnv, DEFAULT_BUILD_MAX_PROCESSES, killUserProcesses, openBuildUserPool, resolveBuildUsers, type BuildUserConfig } from './build-users.js';
import { runBuildspecJob, type BuildspecRun } from './buildspec-job.js';
import { BUILD_USER_NAME, namespaceSupport, usersCanMakeUserNamespaces } from './build-namespace.js';
import { checkSetpriv } from './shell-process.js';
import { runYaml, useWorkspace } from './bash-session.testkit.js';

const isRoot = process.getuid?.() === 0;
const HOST_PATH = process.env.PATH ?? '/usr/bin:/bin';

/** A buildspec whose build phase runs `commands`, exporting `exported`. */
function buildspec(commands: readonly string[], exported: readonly string[] = []): string {
  const env = exported.length ? ['env:', `  exported-variables: [${exported.join(', ')}]`] : [];
  return ['version: 0.2', ...env, 'phases:', '  build:', '    commands:', ...commands.map((c) => `      - ${JSON.stringify(c)}`), ''].join('\n');
}
const NOBODY = { uid: 65534, gid: 65534 };
const BUILD_JOB = JSON.parse(await readFile(new URL('../../contracts/fixtures/v1/stage-job.build.json', import.meta.url), 'utf8')) as unknown;

let root: string;
beforeEach(async () => {
  root = await mkdtemp(join(tmpdir(), 'cv-users-'));
  await chmod(root, 0o755); // mkdtemp makes it 0700: the builds' users could not enter it
});
afterEach(() => rm(root, { recursive: true, force: true }));

/** Resolves once `check` holds (the pool clears an id after the build's outcome is out), or fails after 5 s. */
async function eventually(check: () => boolean | Promise<boolean>): Promise<void> {
  for (const deadline = Date.now() + 5000; !(await check()); await new Promise((r) => setTimeout(r, 10))) {
    if (Date.now() > deadline) throw new Error('the condition never held');
  }
}

/** A block of user ids no other test file uses at the same time. */
const range = (size: number): [number, number] => {
  const first = 2_100_000_000 + Math.floor(Math.random() * 1_000_000) * 10;
  return [first, first + size - 1];
};
const config = (over: Partial<BuildUserConfig> = {}): BuildUserConfig => ({ BUILD_UIDS: range(8), BUILD_UID_LOCK_DIR: join(root, 'locks'), ...over });

/** A process detached from everything (its own session, no mark), running as `uid` until killed: its pid, once it runs as `uid`. */
async function strayAs(uid: number, command = ['sleep', '300']): Promise<number> {
  // Started by root through setpriv, not spawned as the user: a spawn as the user waits for its exec,
  // which a stray already running (one stopping every process of its user) could hold up for ever.
  const child = spawn(checkSetpriv(), [`--reuid=${uid}`, `--regid=${uid}`, '--clear-groups', '--', ...command], { cwd: '/', env: {}, stdio: 'ignore', detached: true });
  child.unref();
  // Running as the user once setpriv has switched to it.
  await eventually(() => processesOfUser(uid, [child.pid!]).length === 1);
  return child.pid!;
}

describe('build users: the settings', () => {
  it('reads BUILD_UIDS as a range, and refuses one that is not', () => {
    const env = z.object(BuildUserEnv);
    expect(env.parse({}).BUILD_UIDS).toBeUndefined();
    expect(env.parse({ BUILD_UIDS: '5000-5003' }).BUILD_UIDS).toEqual([5000, 5003]);
    expect(() => env.parse({ BUILD_UIDS: '5003-5000' })).toThrow(/first ≤ last/);
    expect(() => env.parse({ BUILD_UIDS: '0-10' })).toThrow(/first ≤ last/);
    expect(() => env.parse({ BUILD_UIDS: 'many' })).toThrow(/first-last/);
  });

  it('fails a build once, with the reason, whose environment no shell can be given (a NUL in a stage variable)', async () => {
    const artifacts = new FsArtifactStore(join(root, 'artifacts'));
    const src = join(root, 'src');
    await mkdir(src);
    await writeFile(join(src, 'buildspec.yml'), 'version: 0.2\nphases:\n  build:\n    commands:\n      - echo ran\n');
    const input = await artifacts.putFiles('src.tar', src, ['buildspec.yml']);
    const job = BuildJob.parse({ ...(BUILD_JOB as object), jobId: 'env-run-0001.Build.1', runId: 'env-run-0001', input, env: { variables: { X: 'a\0B=1' } } });
    let log = '';
    const run = await runBuildspecJob(job, { artifacts, workDir: join(root, 'work'), log: (t) => void (log += t), signal: new AbortController().signal }, async (r: BuildspecRun) => r);
    expect(run).toMatchObject({ status: 'FAILED', message: "the build's environment variable X holds a NUL byte" });
    expect(log).not.toMatch(/^ran$/m);
  });

  it('builds a source holding links to absolute paths and out of it, as git checked them out; one that cannot be unpacked fails once, saying why', async () => {
    const artifacts = new FsArtifactStore(join(root, 'artifacts'));
    const src = join(root, 'src');
    await mkdir(src);
    await writeFile(join(src, 'buildspec.yml'), buildspec(['readlink tool', 'readlink shared']));
    await symlink('/usr/bin/env', join(src, 'tool'));
    await symlink('../../shared/config', join(src, 'shared'));
    const input = await artifacts.putFiles('links.tar', src, ['buildspec.yml', 'tool', 'shared']);
    const job = (name: string, ref: typeof input) => BuildJob.parse({ ...(BUILD_JOB as object), jobId: `${name}.Build.1`, runId: name, input: ref });
    let log = '';
    const opts = { artifacts, workDir: join(root, 'work'), log: (t: string) => void (log += t), signal: new AbortController().signal };
    const run = await runBuildspecJob(job('links-run-0001', input), opts, async (r: BuildspecRun) => r);
    expect(run.status, log).toBe('SUCCEEDED');
    expect(log).toMatch(/^\/usr\/bin\/env$/m);
    expect(log).toMatch(/^\.\.\/\.\.\/shared\/config$/m);

    // A link `x`, then a file under x/: never written through the link, and the build fails once with the reason.
    await mkdir(join(root, 'evil', 'x'), { recursive: true });
    await writeFile(join(root, 'evil', 'x', 'f'), 'f');
    await symlink('/tmp', join(root, 'x'));
    spawnSync('tar', ['-cf', join(root, 'evil.tar'), '-C', root, 'x']);
    spawnSync('tar', ['-rf', join(root, 'evil.tar'), '-C', join(root, 'evil'), 'x/f']);
    const evil = await artifacts.putTar('evil.tar', join(root, 'evil.tar'));
    const failed = await runBuildspecJob(job('links-run-0002', evil), opts, async (r: BuildspecRun) => r);
    expect(failed).toMatchObject({ status: 'FAILED', message: 'artifact evil.tar holds x twice (a link and something else)' });
  });

  it.runIf(!isRoot)('a service that is not root runs builds as itself, with a warning; BUILD_UID is refused', async () => {
    const resolved = await resolveBuildUsers(join(root, 'work'), config(), 2);
    expect(resolved.warning).toMatch(/own user/);
    expect(await resolved.users.withUser(async (user) => user)).toBeUndefined();
    await expect(resolveBuildUsers(join(root, 'work'), config({ BUILD_UID: 1234 }), 2)).rejects.toThrow(/needs the service to run as root/);
  });
});

describe.runIf(isRoot)('build users, for a root service', () => {
  const dirs = useWorkspace();

  /**
   * A workspace for a build run as a fresh user id of the test range: `ws` is the user's, in `base`,
   * which the user may traverse. `base` is the test's workspace root, or, given `parent`, a new
   * directory there (removed after the test), where it matters where it lies. `own(name)` makes a
   * directory of the user's (0700) in `base`.
   */
  async function buildUserWorkspace(parent?: string) {
    let base: string;
    let ws: string;
    if (parent === undefined) ({ root: base, ws } = dirs());
    else {
      const made = await mkdtemp(join(parent, 'cv-ws-'));
      onTestFinished(() => rm(made, { recursive: true, force: true }));
      base = made;
      ws = join(base, 'ws');
      await mkdir(ws);
    }
    await chmod(base, 0o755);
    const [uid] = range(1);
    await chown(ws, uid, uid);
    const own = async (name: string) => {
      const dir = join(base, name);
      await mkdir(dir, { mode: 0o700 });
      await chown(dir, uid, uid);
      return dir;
    };
    return { base, ws, uid, own };
  }

  it('a build as another user cannot read the service\'s environment', async () => {
    const { root: wsRoot, ws } = dirs();
    await chmod(wsRoot, 0o755);
    await chown(ws, NOBODY.uid, NOBODY.gid);
    const run = await runYaml(ws, 'version: 0.2\nenv:\n  exported-variables: [WHO]\nphases:\n  build:\n    commands:\n      - WHO=$(id -u)\n      - cat /proc/$PPID/environ > stolen.txt\n', {
      user: NOBODY,
      env: { PATH: HOST_PATH },
    });
    expect(run.exportedVariables.WHO).toBe('65534');
    expect(run.status).toBe('FAILED');
    // In a namespace of its own the service's process is not even there; in the host's, it is not readable.
    expect(run.output).toMatch(namespaceSupport().ok ? /No such file or directory/ : /Permission denied/);
  });

  it('by default each concurrent build gets a user of its own from the range; BUILD_UID makes them share one', async () => {
    const cfg = config();
    const { users, warning } = await resolveBuildUsers(join(root, 'work'), cfg, 3);
    if (namespaceSupport().ok) {
      expect(warning).toBeUndefined();
      // This WORK_DIR is under /tmp: the builds keep the host's.
      expect(users.summary).toMatch(/each build shell has its own \/proc \(showing its own processes only\), \/dev\/shm, SysV IPC \(\/tmp stays the host's: WORK_DIR is under it\); its user is named conveyor-build there$/);
    } else expect(warning).toMatch(/in this host's namespaces/);
    try {
      const seen: number[] = [];
      let release!: () => void;
      const gate = new Promise<void>((r) => (release = r));
      const builds = [0, 1, 2].map(() =>
        users.withUser(async (user) => {
          seen.push(user!.uid);
          if (seen.length === 3) release();
          await gate;
        }),
      );
      await Promise.all(builds);
      expect(new Set(seen).size).toBe(3);
      for (const uid of seen) expect(uid).toBeGreaterThanOrEqual(cfg.BUILD_UIDS![0]);
    } finally {
      await users.close();
    }
    const shared = await resolveBuildUsers(join(root, 'work'), config({ BUILD_UID: 1234 }), 3);
    expect(await shared.users.withUser(async (user) => user)).toEqual({ uid: 1234, gid: 1234, maxProcesses: DEFAULT_BUILD_MAX_PROCESSES });
    // A user the host names keeps its name; one shared by all builds sees them all in its /proc.
    const nobody = await resolveBuildUsers(join(root, 'work'), config({ BUILD_UID: NOBODY.uid }), 3);
    if (namespaceSupport().ok) expect(nobody.users.summary).toMatch(/the other builds' too, as they share the user\).*WORK_DIR is under it\)$/);
  });

  it('refuses a work directory the builds\' users cannot reach, or, with the default range, runs builds as itself and says so', async () => {
    const locked = join(root, 'locked');
    await mkdir(locked, { mode: 0o700 });
    await expect(resolveBuildUsers(join(locked, 'work'), config(), 2)).rejects.toThrow(new RegExp(`BUILD_UIDS cannot be used: user \\d+ cannot reach ${locked}`));
    // A parent anyone may write: a build could rename the work directory away and put its own in place.
    const open = join(root, 'open');
    await mkdir(open);
    await chmod(open, 0o777);
    await expect(resolveBuildUsers(join(open, 'work'), config(), 2)).rejects.toThrow(new RegExp(`may write ${open}, where the service keeps`));
    // Not asked for (the default range): builds run as the service itself, and it says so.
    const fallback = await resolveBuildUsers(join(locked, 'work'), config({ BUILD_UIDS: undefined }), 2);
    expect(fallback.warning).toMatch(new RegExp(`own user .*cannot reach ${locked}`));
    expect(await fallback.users.withUser(async (user) => user)).toBeUndefined();
    await expect(resolveBuildUsers(join(locked, 'work'), config({ BUILD_UID: 1234 }), 2)).rejects.toThrow(/BUILD_UID=1234 cannot be used: user 1234 cannot reach/);
  });

  it('two services of one host take different user ids; one that cannot get enough says so; closing frees them', async () => {
    const [first] = range(3);
    const lockDir = join(root, 'locks');
    const a = await openBuildUserPool({ first, last: first + 2, size: 2, lockDir });
    await expect(openBuildUserPool({ first, last: first + 2, size: 2, lockDir })).rejects.toThrow(/1 of the 2 user ids this service needs/);
    const b = await openBuildUserPool({ first, last: first + 2, size: 1, lockDir });
    const uidOf = (pool: typeof a) => pool.withUser(async (user) => user!.uid);
    expect([await uidOf(a), await uidOf(b)]).not.toContain(undefined);
    expect(await uidOf(b)).toBe(first + 2);
    await a.close();
    const c = await openBuildUserPool({ first, last: first + 2, size: 2, lockDir });
    expect(await uidOf(c)).toBe(first);
    await Promise.all([b.close(), c.close()]);
  }, 30_000); // four pools, each with its lock holders and sweeps: seconds on a loaded machine

  it('kills what a dead holder left running as its ids when it takes them, and what a build left, detached or not, when it ends', async () => {
    const [first] = range(1);
    const leftover = await strayAs(first);
    expect(pidAlive(leftover)).toBe(true);
    const pool = await openBuildUserPool({ first, last: first, size: 1, lockDir: join(root, 'locks') });
    try {
      expect(pidAlive(leftover)).toBe(false);
      let stray = 0;
      await pool.withUser(async (user) => {
        stray = await strayAs(user!.uid);
        expect(pidAlive(stray)).toBe(true);
      });
      await eventually(() => !pidAlive(stray));
      expect(processesOfUser(first)).toEqual([]);
    } finally {
      await pool.close();
      await killUserProcesses({ uid: first, gid: first });
    }
  });

  it('kills processes that fight the kill (stopping every process of their user, in a loop)', async () => {
    const [first] = range(1);
    const fighters: number[] = [];
    for (let i = 0; i < 2; i++) fighters.push(await strayAs(first, ['/bin/sh', '-c', 'while :; do kill -STOP -1 2>/dev/null; done']));
    try {
      const { found, survivors } = await killUserProcesses({ uid: first, gid: first });
      expect(found).toBeGreaterThanOrEqual(2);
      expect(survivors).toEqual([]);
      for (const pid of fighters) expect(pidAlive(pid)).toBe(false);
    } finally {
      for (const pid of fighters) spawnSync('kill', ['-KILL', String(pid)]);
    }
  });

  it.runIf(process.arch === 'x64')('sees, and kills, a process whose main thread exited while another thread runs (it looks like a zombie)', async () => {
    const [first] = range(1);
    // SYS_exit (60 on x86-64) ends the main thread only; the sleeping thread goes on.
    const script = 'import ctypes, threading, time\nthreading.Thread(target=lambda: time.sleep(300)).start()\ntime.sleep(0.1)\nctypes.CDLL(None).syscall(60, 0)';
    const pid = await strayAs(first, ['/usr/bin/python3', '-c', script]);
    try {
      await new Promise((r) => setTimeout(r, 500));
      expect(processesOfUser(first)).toEqual([pid]);
      const { found, survivors } = await killUserProcesses({ uid: first, gid: first });
      expect(found).toBe(1);
      expect(survivors).toEqual([]);
      await eventually(() => processesOfUser(first).length === 0);
    } finally {
      spawnSync('kill', ['-KILL', String(pid)]);
    }
  });

  it('runs builds with no_new_privs: a setuid file does not lend them its owner\'s rights', async () => {
    const { base: wsRoot, ws, uid: first } = await buildUserWorkspace();
    // A setuid-root copy of id, as a build that got one planted or extracted would find it.
    const setuidId = join(wsRoot, 'id');
    await copyFile('/usr/bin/id', setuidId);
    await chmod(setuidId, 0o4755);
    // The build's PATH (a buildspec sets it) leads first to a fake setpriv that would drop the flag.
    const fakes = join(wsRoot, 'fakes');
    await mkdir(fakes);
    await writeFile(join(fakes, 'setpriv'), '#!/bin/sh\nwhile [ "$1" != "--" ]; do shift; done; shift; exec "$@"\n', { mode: 0o755 });
    const run = await runYaml(ws, `version: 0.2\nenv:\n  exported-variables: [EUID_SEEN]\nphases:\n  build:\n    commands:\n      - EUID_SEEN=$(${setuidId} -u)\n`, {
      user: { uid: first, gid: first },
      env: { PATH: `${fakes}:${HOST_PATH}` },
    });
    expect(run.status).toBe('SUCCEEDED');
    expect(run.exportedVariables.EUID_SEEN).toBe(String(first));
  });

  it.runIf(namespaceSupport().ok)('gives a build user a name (with the build\'s HOME) in the build alone: whoami, os.userInfo(), getent work; the host\'s files are untouched', async () => {
    const { ws, uid: first, own } = await buildUserWorkspace();
    const hostPasswd = await readFile('/etc/passwd', 'utf8');
    const home = await own('home');
    const commands = [
      'WHO=$(whoami)',
      `NODE_NAME=$(${process.execPath} -e 'process.stdout.write(require("os").userInfo().username)')`,
      'ENTRY=$(getent passwd $(id -u))',
      'GROUP=$(id -gn)',
      'ENV_USER=$USER',
      // A bind mount needs CAP_SYS_ADMIN: the build cannot undo it.
      'UNDO=$(umount /etc/passwd >/dev/null 2>&1 && echo undone || echo refused)',
    ];
    const run = await runYaml(ws, buildspec(commands, ['WHO', 'NODE_NAME', 'ENTRY', 'GROUP', 'ENV_USER', 'UNDO']), {
      user: { uid: first, gid: first },
      env: { PATH: HOST_PATH, HOME: home },
    });
    expect(run.status).toBe('SUCCEEDED');
    expect(run.exportedVariables).toMatchObject({ WHO: BUILD_USER_NAME, NODE_NAME: BUILD_USER_NAME, GROUP: BUILD_USER_NAME, ENV_USER: BUILD_USER_NAME, UNDO: 'refused' });
    expect(run.exportedVariables.ENTRY).toBe(`${BUILD_USER_NAME}:x:${first}:${first}:Conveyor build:${home}:/bin/bash`);
    // Nothing reached the host: its passwd, and its mounts.
    expect(await readFile('/etc/passwd', 'utf8')).toBe(hostPasswd);
    expect(await readFile('/proc/self/mountinfo', 'utf8')).not.toMatch(/ \/etc\/passwd /);
  });

  it.runIf(namespaceSupport().ok)('gives a build its own /proc (its processes only), /tmp and /var/tmp (its TMPDIR), /dev/shm and SysV IPC, in every shell; nothing of them reaches the host', async () => {
    // A work directory outside /tmp (as the services' default is): one inside would keep the host's /tmp.
    const { ws, uid: first, own } = await buildUserWorkspace('/run');
    const tmpDir = await own('t');
    const shmDir = await own('m');
    const hostSysctls = await Promise.all(['shmmax', 'msgmni', 'sem'].map((k) => readFile(`/proc/sys/kernel/${k}`, 'utf8')));
    // A segment of the host's, which the build must not see.
    const hostSegment = /(\d+)\s*$/.exec(spawnSync('ipcmk', ['-M', '4096'], { encoding: 'utf8' }).stdout)![1]!;
    onTestFinished(() => void spawnSync('ipcrm', ['-m', hostSegment]));
    const marker = `cv-private-${first}`;
    const commands = [
      `SERVICE=$([ -e /proc/${process.pid} ] && echo visible || echo hidden)`,
      'SELF=$([ -e /proc/$$/cmdline ] && echo visible || echo hidden)',
      `echo x > /tmp/${marker} && echo y > /var/tmp/${marker}.var && echo z > /dev/shm/${marker}.shm`,
      'SHM_ID=$(ipcmk -M 4096 | grep -o "[0-9]*$")',
      'SHM_SEEN=$(ipcs -m | grep -c "^0x")',
      // Over the 256 MiB its IPC namespace allows; its queues and semaphores are limited too.
      'SHM_BIG=$(ipcmk -M 300000000 >/dev/null 2>&1 && echo made || echo refused)',
      'MSGMNI=$(cat /proc/sys/kernel/msgmni)',
      'SEMMNI=$(awk "{print \\$4}" /proc/sys/kernel/sem)',
      // Kept for the end: a fresh shell starts with fresh variables.
      'printf "SERVICE=%s SELF=%s SHM_ID=%s SHM_SEEN=%s SHM_BIG=%s MSGMNI=%s SEMMNI=%s\\n" $SERVICE $SELF $SHM_ID $SHM_SEEN $SHM_BIG $MSGMNI $SEMMNI > first.env',
      // A second shell (the first one exits) starts in namespaces of its own as well.
      'exit 0',
      `AGAIN=$([ -e /proc/${process.pid} ] && echo visible || echo hidden)-$(cat /tmp/${marker})-$(whoami)`,
      '. ./first.env',
    ];
    const run = await runYaml(ws, buildspec(commands, ['SERVICE', 'SELF', 'SHM_ID', 'SHM_SEEN', 'SHM_BIG', 'MSGMNI', 'SEMMNI', 'AGAIN']), {
      user: { uid: first, gid: first },
      tmpDir,
      shmDir,
      // A HOME in /tmp does not give the build the host's /tmp: only root's own directories decide that.
      env: { PATH: HOST_PATH, HOME: '/tmp' },
    });
    expect(run.status, run.output).toBe('SUCCEEDED');
    expect(run.exportedVariables).toMatchObject({ SERVICE: 'hidden', SELF: 'visible', SHM_SEEN: '1', SHM_BIG: 'refused', MSGMNI: '16', SEMMNI: '128', AGAIN: `hidden-x-${BUILD_USER_NAME}` });
    // The limits were the namespace's: the host's are as they were.
    expect(await Promise.all(['shmmax', 'msgmni', 'sem'].map((k) => readFile(`/proc/sys/kernel/${k}`, 'utf8')))).toEqual(hostSysctls);
    expect(run.exportedVariables.SHM_ID).toMatch(/^\d+$/);
    // Its /tmp and /var/tmp were its TMPDIR, its /dev/shm its own directory (on disk); the host's saw nothing.
    expect(await readFile(join(tmpDir, marker), 'utf8')).toBe('x\n');
    expect(await readFile(join(tmpDir, `${marker}.var`), 'utf8')).toBe('y\n');
    expect(await readFile(join(shmDir, `${marker}.shm`), 'utf8')).toBe('z\n');
    for (const path of [`/tmp/${marker}`, `/var/tmp/${marker}.var`, `/dev/shm/${marker}.shm`]) await expect(stat(path)).rejects.toThrow(/ENOENT/);
    // The shared memory segment went with the build's namespace: the host has none of its user's.
    const segments = spawnSync('ipcs', ['-m', '-c'], { encoding: 'utf8' }).stdout;
    expect(segments.split('\n').filter((line) => line.split(/\s+/).includes(String(first)))).toEqual([]);
  });

  it.runIf(namespaceSupport().ok)('keeps the host\'s /tmp for a build whose work directory lies there, still with its own /proc', async () => {
    const { ws, uid: first, own } = await buildUserWorkspace('/tmp');
    const tmpDir = await own('t');
    const run = await runYaml(ws, `version: 0.2\nenv:\n  exported-variables: [SERVICE, WS]\nphases:\n  build:\n    commands:\n      - SERVICE=$([ -e /proc/${process.pid} ] && echo visible || echo hidden)\n      - WS=$(ls -d ${ws})\n`, {
      user: { uid: first, gid: first },
      tmpDir,
      env: { PATH: HOST_PATH },
    });
    expect(run.status, run.output).toBe('SUCCEEDED');
    expect(run.exportedVariables).toMatchObject({ SERVICE: 'hidden', WS: ws });
  });

  it.runIf(namespaceSupport().ok)('fails a build whose namespace cannot be set up, saying so', async () => {
    const { base: wsRoot, ws, uid: first } = await buildUserWorkspace('/run');
    const run = await runYaml(ws, 'version: 0.2\nphases:\n  build:\n    commands:\n      - echo never\n', {
      user: { uid: first, gid: first },
      tmpDir: join(wsRoot, 'missing'),
      env: { PATH: HOST_PATH },
    });
    expect(run.status).toBe('FAILED');
    expect(run.output).toMatch(/the build's namespace could not be set up: a \/(dev\/shm|var\/tmp|tmp) of its own/);
    expect(run.output).not.toMatch(/^never$/m);
    expect(run.message).toBe('phases.build.commands[0] did not run, as the build shell could not be started (its namespace could not be set up; exit status 125): echo never');
  });

  it.runIf(spawnSync('cc', ['--version'], { stdio: 'ignore' }).status === 0)('never hands the build\'s environment to a program root runs (LD_PRELOAD reaches the build\'s own processes only)', async () => {
    // Not in /run: a tmpfs mounted noexec, where no library can be loaded.
    const { base: wsRoot, ws, uid: first } = await buildUserWorkspace(tmpdir());
    // A library a build could ship in its source: it notes, in a file anyone may write, each process it is
    // loaded into, and whether that process is root.
    const seen = join(wsRoot, 'seen');
    await writeFile(seen, '', { mode: 0o666 });
    await chmod(seen, 0o666);
    const source = join(wsRoot, 'preload.c');
    await writeFile(
      source,
      `#include <stdio.h>\n#include <unistd.h>\n__attribute__((constructor)) static void noted(void) { FILE *f = fopen("${seen}", "a"); if (f) { fprintf(f, "%s\\n", geteuid() == 0 ? "root" : "user"); fclose(f); } }\n`,
    );
    const library = join(ws, 'preload.so');
    const built = spawnSync('cc', ['-shared', '-fPIC', '-o', library, source], { encoding: 'utf8' });
    expect(built.status, built.stderr).toBe(0);
    await chmod(library, 0o755);
    // The build's environment (a buildspec's variables end up in it).
    const env = { PATH: HOST_PATH, LD_PRELOAD: library, LIBMOUNT_DEBUG: 'all' };
    const run = await runYaml(ws, 'version: 0.2\nphases:\n  build:\n    commands:\n      - id -u\n      - exit 0\n      - id -u\n', { user: { uid: first, gid: first }, env });
    expect(run.status, run.output).toBe('SUCCEEDED');
    const loads = (await readFile(seen, 'utf8')).split('\n').filter(Boolean);
    // The build's own processes did get it (its environment is its own), root's never did.
    expect(loads).toContain('user');
    expect(loads).not.toContain('root');
    expect(run.output).not.toMatch(/libmount/);
  });

  it('hands the build its environment as its user: libmount\'s variables never reach root\'s mount; unexportable names are named, a NUL is refused, POSIXLY_CORRECT and readonly names do not stop the shell', async () => {
    const { ws, uid: first } = await buildUserWorkspace();
    const user = { uid: first, gid: first };
    const PATH = HOST_PATH;
    // Given relative (to this process), as a caller may.
    const relativeWs = relative(process.cwd(), ws);
    const env = { PATH, LIBMOUNT_DEBUG: 'all', 'spring.profile': 'x', POSIXLY_CORRECT: '1', UID: '5', MULTI: 'line one\nline two' };
    const run = await runYaml(relativeWs, 'version: 0.2\nenv:\n  exported-variables: [SEEN, POSIX, LINES]\nphases:\n  build:\n    commands:\n      - SEEN=$LIBMOUNT_DEBUG\n      - POSIX=$POSIXLY_CORRECT\n      - LINES=$(printf "%s" "$MULTI" | wc -l)\n', { user, env });
    expect(run.status, run.output).toBe('SUCCEEDED');
    expect(run.exportedVariables).toMatchObject({ SEEN: 'all', POSIX: '1', LINES: '1' });
    expect(run.output).not.toMatch(/libmount/);
    expect(run.output).toMatch(/not passed to the build: spring\.profile/);
    await expect(runYaml(ws, 'version: 0.2\nphases:\n  build:\n    commands:\n      - "true"\n', { user, env: { PATH, X: 'a\0B=1' } })).rejects.toThrow(/NUL/);
    // Counted in bytes: 50,000 euro signs are 150,000 bytes, which exec would refuse.
    await expect(runYaml(ws, 'version: 0.2\nphases:\n  build:\n    commands:\n      - "true"\n', { user, env: { PATH, X: '€'.repeat(50_000) } })).rejects.toThrow(/over 128 KiB/);
    const loaders = await runYaml(ws, 'version: 0.2\nphases:\n  build:\n    commands:\n      - "true"\n', { user, env: { PATH, __cv_all: 'mine' } });
    expect(loaders.output).toMatch(/not passed to the build: __cv_all/);
  });

  it('stops a build\'s fork bomb at its process limit (RLIMIT_NPROC of its user), and the pool lends ids with the limit', async () => {
    const { ws, uid: first } = await buildUserWorkspace();
    // Node reports a refused fork at once (bash would retry it for seconds): spawn 200, count, stop them.
    const bomb = `let ok = 0, refused = 0; const kids = []; for (let i = 0; i < 200; i++) { try { const c = require('child_process').spawn('sleep', ['30']); c.on('error', () => {}); if (c.pid) { ok++; kids.push(c); } else refused++; } catch { refused++; } } kids.forEach((c) => c.kill('SIGKILL')); process.stdout.write(ok + ' ' + refused);`;
    await writeFile(join(ws, 'bomb.cjs'), bomb, { mode: 0o644 });
    const run = await runYaml(ws, `version: 0.2\nenv:\n  exported-variables: [COUNTS, LIMIT]\nphases:\n  build:\n    commands:\n      - LIMIT=$(ulimit -Su)/$(ulimit -Hu)\n      - COUNTS=$(${process.execPath} bomb.cjs)\n`, {
      user: { uid: first, gid: first, maxProcesses: 64 },
      env: { PATH: HOST_PATH },
    });
    expect(run.status, run.output).toBe('SUCCEEDED');
    expect(run.exportedVariables.LIMIT).toBe('64/64');
    const [ok, refused] = run.exportedVariables.COUNTS!.split(' ').map(Number);
    expect(ok).toBeGreaterThan(0);
    expect(ok).toBeLessThan(64);
    expect(refused).toBeGreaterThan(0);
    // A limit that could take most of the host's process ids is said at start-up.
    const warnings: string[] = [];
    const huge = await resolveBuildUsers(join(root, 'work'), config({ BUILD_MAX_PROCESSES: 10_000_000 }), 3, (m) => warnings.push(m));
    await huge.users.close();
    expect(warnings.join('\n')).toMatch(/BUILD_MAX_PROCESSES 10000000 × 3 concurrent builds could take 30000000 of this host's/);
    // A shared user's limit is shared by its builds: counted once.
    const sharedWarnings: string[] = [];
    await resolveBuildUsers(join(root, 'work'), config({ BUILD_UID: NOBODY.uid, BUILD_MAX_PROCESSES: 10_000_000 }), 3, (m) => sharedWarnings.push(m));
    expect(sharedWarnings.join('\n')).toMatch(/BUILD_MAX_PROCESSES 10000000 could take 10000000 of/);
    // Where builds could make user namespaces of their own (and so escape the IPC limits), the service says so.
    expect(warnings.some((m) => /user namespaces of their own/.test(m))).toBe(usersCanMakeUserNamespaces(first));
    const pool = await openBuildUserPool({ first, last: first, size: 1, lockDir: join(root, 'locks'), maxProcesses: 99 });
    try {
      expect(await pool.withUser(async (user) => user)).toEqual({ uid: first, gid: first, maxProcesses: 99 });
      expect(pool.summary).toMatch(/at most 99 processes each/);
    } finally {
      await pool.close();
    }
  });

  it('starts a build\'s shell by absolute path, not looked up on the build\'s PATH: a PATH set to literal text fails the commands that need it, not the shell', async () => {
    const { ws, uid: first } = await buildUserWorkspace();
    for (const shell of ['bash', '/bin/sh']) {
      const run = await runYaml(ws, `version: 0.2\nenv:\n  shell: ${shell}\nphases:\n  build:\n    commands:\n      - echo "$0 PATH=$PATH"\n      - ls\n`, {
        user: { uid: first, gid: first },
        env: { PATH: '$HOME/.local/bin:$PATH' },
      });
      expect(run.status, run.output).toBe('FAILED');
      expect(run.output).toContain(`${shell} PATH=$HOME/.local/bin:$PATH\n`);
      expect(run.message).toBe('phases.build.commands[1] exited with code 127: ls');
    }
  });

  it('starts a build\'s shell in its workspace as its user: a workspace the build swapped for a link to where its user may not go is not entered', async () => {
    const base = await mkdtemp('/run/cv-cwd-');
    onTestFinished(() => rm(base, { recursive: true, force: true }));
    await chmod(base, 0o755);
    const [first] = range(1);
    // The job directory is the build's (as the service hands it over); the workspace is inside.
    const job = join(base, 'job');
    await mkdir(join(job, 'src'), { recursive: true });
    await chown(job, first, first);
    await chown(join(job, 'src'), first, first);
    // Somewhere only root may enter, holding a file anyone could read once there.
    const closed = join(base, 'closed');
    await mkdir(closed, { mode: 0o700 });
    await writeFile(join(closed, 'secret'), 'top secret\n', { mode: 0o644 });
    const ws = join(job, 'src');
    const run = await runYaml(ws, `version: 0.2\nenv:\n  exported-variables: [LEAK]\nphases:\n  build:\n    commands:\n      - cd / && mv ${ws} ${ws}.orig && ln -s ${closed} ${ws}\n      - exit 0\n      - LEAK=$(cat secret 2>&1 || true)\n`, {
      user: { uid: first, gid: first },
      controlDir: join(base, 'ctl'),
      env: { PATH: HOST_PATH },
    });
    expect(run.status).toBe('FAILED');
    expect(run.output).toMatch(/user \d+ cannot enter its workspace/);
    expect(run.message).toMatch(/^phases\.build\.commands\[2\] did not run, as the build shell could not be started \(it could not enter the workspace \S+: removed, or replaced by the build; exit status 123\): LEAK=/);
    expect(run.output).not.toMatch(/top secret/);
    expect(run.exportedVariables.LEAK ?? '').not.toMatch(/top secret/);
  });

  it('without CAP_SYS_ADMIN (a container\'s root) builds still run as their user, in the host\'s namespaces, and the service knows it', async () => {
    const { ws, uid: first } = await buildUserWorkspace();
    const fixture = new URL('./build-namespace.fixture.ts', import.meta.url).pathname;
    const repo = new URL('../../..', import.meta.url).pathname;
    const r = spawnSync(checkSetpriv(), ['--bounding-set=-sys_admin', '--', process.execPath, '--import', 'tsx', fixture, ws, String(first)], { cwd: repo, encoding: 'utf8', timeout: 60_000 });
    expect(r.status, r.stderr).toBe(0);
    const out = JSON.parse(r.stdout) as { support: { ok: boolean; why?: string }; status: string; exported: Record<string, string> };
    expect(out.support).toMatchObject({ ok: false, why: expect.stringMatching(/CAP_SYS_ADMIN/) });
    expect(out.status).toBe('SUCCEEDED');
    expect(out.exported).toMatchObject({ WHO: String(first), ONE: 'visible' });
  });

  it('deletes what a build left in the shared temporary directories (a setuid copy of a shell, say)', async () => {
    const [first] = range(1);
    const pool = await openBuildUserPool({ first, last: first, size: 1, lockDir: join(root, 'locks') });
    const planted = `/tmp/cv-planted-${first}`;
    try {
      await pool.withUser(async (user) => {
        const made = spawnSync('/bin/sh', ['-c', `cp /bin/sh ${planted} && chmod 4755 ${planted}`], { uid: user!.uid, gid: user!.gid, cwd: '/' });
        expect(made.status).toBe(0);
        expect((await stat(planted)).uid).toBe(user!.uid);
      });
      await eventually(() => stat(planted).then(() => false, () => true));
    } finally {
      await rm(planted, { force: true });
      await pool.close();
    }
  });

  it('never lends an id whose lock another process took after losing it, nor kills that holder\'s processes', async () => {
    const [first] = range(2);
    const lockDir = join(root, 'locks');
    const pool = await openBuildUserPool({ first, last: first + 1, size: 1, lockDir });
    let other: Awaited<ReturnType<typeof tryHoldFileLock>>;
    let theirs = 0;
    try {
      // The pool's holder of the lock on `first` dies (an administrator, the OOM killer); another service takes it and builds.
      const holder = spawnSync('pgrep', ['-f', `uid-${first}.lock`], { encoding: 'utf8' }).stdout.trim().split('\n').map(Number);
      expect(holder.length).toBeGreaterThan(0);
      for (const pid of holder) process.kill(pid, 'SIGKILL');
      await new Promise((r) => setTimeout(r, 100));
      other = await tryHoldFileLock(join(lockDir, `uid-${first}.lock`));
      expect(other).toBeDefined();
      theirs = await strayAs(first);
      expect(await pool.withUser(async (user) => user!.uid)).toBe(first + 1);
      expect(pidAlive(theirs)).toBe(true);
    } finally {
      await pool.close();
      await other?.release();
      await killUserProcesses({ uid: first, gid: first });
    }
  });

  it('sets aside an id whose processes will not die: it keeps the id\'s lock, lends another, and sweeps it again until it is clear', async () => {
    const [first] = range(2);
    const lockDir = join(root, 'locks');
    // Stands in for processes that outlive the sweep (a fork bomb, uninterruptible sleep): the first
    // build leaves some that two sweeps cannot kill.
    let stubborn = 0;
    const warnings: string[] = [];
    const pool = await openBuildUserPool({
      first,
      last: first + 1,
      size: 1,
      lockDir,
      sweepAgainMs: 50,
      warn: (message) => warnings.push(message),
      // Slow, as a real kill with survivors is (it waits for them): the id must stay this pool's meanwhile.
      kill: async (user) => {
        await new Promise((r) => setTimeout(r, 30));
        return user.uid === first && stubborn-- > 0 ? { found: 1, survivors: [424242] } : { found: 0, survivors: [] };
      },
    });
    try {
      expect(
        await pool.withUser(async (user) => {
          stubborn = 6;
          return user!.uid;
        }),
      ).toBe(first);
      // Its clearing failed (the first stubborn sweep): the next build gets the replacement.
      expect(await pool.withUser(async (user) => user!.uid)).toBe(first + 1);
      // Meanwhile no other service may take `first`, and it stays among this service's ids (a process of it
      // keeps the Redis fence up), through every sweep; once a later sweep finds it clear, it is free again.
      expect(await tryHoldFileLock(join(lockDir, `uid-${first}.lock`))).toBeUndefined();
      while (stubborn > 0) {
        expect(pool.ownIds()).toContain(first);
        await new Promise((r) => setTimeout(r, 5));
      }
      let freed: Awaited<ReturnType<typeof tryHoldFileLock>>;
      await eventually(async () => (freed = await tryHoldFileLock(join(lockDir, `uid-${first}.lock`))) !== undefined);
      expect(stubborn).toBeLessThanOrEqual(0);
      await freed!.release();
    } finally {
      await pool.close();
    }
    expect(warnings).toEqual([`build user id ${first} set aside: processes 424242 survive SIGKILL`]);
  });

  it('refuses a lock directory others may write to, and ids the system knows as users', async () => {
    const open = join(root, 'open-locks');
    await mkdir(open, { mode: 0o777 });
    await chmod(open, 0o777);
    await expect(openBuildUserPool({ first: range(1)[0], last: range(1)[0], size: 1, lockDir: open })).rejects.toThrow(/nobody else may write to/);
    await expect(openBuildUserPool({ first: NOBODY.uid, last: NOBODY.uid, size: 1, lockDir: join(root, 'locks') })).rejects.toThrow(/users of this system/);
  });

  it('closing waits for the builds still running before it frees their ids', async () => {
    const [first] = range(1);
    const pool = await openBuildUserPool({ first, last: first, size: 1, lockDir: join(root, 'locks') });
    let finish!: () => void;
    const build = pool.withUser(() => new Promise<void>((r) => (finish = r)));
    await new Promise((r) => setTimeout(r, 20));
    let closed = false;
    const closing = pool.close().then(() => (closed = true));
    // Long enough for a close that does not wait to have ended (clearing an idle id takes milliseconds).
    await new Promise((r) => setTimeout(r, 1000));
    expect(closed).toBe(false);
    finish();
    await Promise.all([build, closing]);
    expect(closed).toBe(true);
  });

  it('builds running at once cannot read each other\'s environment or workspace, nor keep a process running after they end', async () => {
    const [first] = range(2);
    const pool = await openBuildUserPool({ first, last: first + 1, size: 2, lockDir: join(root, 'locks') });
    const shared = join(root, 'shared');
    await mkdir(shared);
    await chmod(shared, 0o1777);
    const artifacts = new FsArtifactStore(join(root, 'artifacts'));
    const source = async (name: string, commands: string[], exported: string[]) => {
      const dir = join(root, `src-${name}`);
      await mkdir(dir);
      const yaml = ['version: 0.2', 'env:', '  variables:', `    SECRET: secret-of-${name}`, `  exported-variables: [${exported.join(', ')}]`, 'phases:', '  build:', '    commands:', ...commands.map((c) => `      - ${JSON.stringify(c)}`)].join('\n');
      await writeFile(join(dir, 'buildspec.yml'), yaml);
      return artifacts.putFiles(`src-${name}.tar`, dir, ['buildspec.yml']);
    };
    const inputA = await source(
      'a',
      [
        `echo $$ > ${shared}/a.pid`,
        `echo $CODEBUILD_SRC_DIR > ${shared}/a.ws`,
        `echo secret-of-a > $(mktemp) && dirname $(mktemp) > ${shared}/a.tmp`,
        `env -u CONVEYOR_BUILD_MARK setsid -f sleep 300 < /dev/null > /dev/null 2>&1; pgrep -n -u $(id -u) -x sleep > ${shared}/a.stray`,
        `for i in $(seq 200); do [ -e ${shared}/b.done ] && break; sleep 0.1; done`,
      ],
      [],
    );
    const inputB = await source(
      'b',
      [
        `for i in $(seq 200); do [ -s ${shared}/a.ws ] && break; sleep 0.1; done`,
        `ENVIRON=$(cat /proc/$(cat ${shared}/a.pid)/environ 2>/dev/null | tr '\\0' '\\n' | grep -c secret-of-a || true)`,
        `LISTING=$(ls $(cat ${shared}/a.ws) 2>&1 || true)`,
        `TEMP=$(grep -rs secret-of-a $(cat ${shared}/a.tmp) 2>/dev/null | wc -l)`,
        `SIGNAL=$(kill -0 $(cat ${shared}/a.pid) 2>/dev/null && echo reached || echo refused)`,
      ],
      ['ENVIRON', 'LISTING', 'SIGNAL', 'TEMP'],
    );
    const job = (n: number, input: typeof inputA) => BuildJob.parse({ ...(BUILD_JOB as object), jobId: `isolation-run-${n}.Build.1`, runId: `isolation-run-${n}`, input });
    // A's files in the shared directory (under /tmp) are deleted when A ends: read what is needed before.
    let stray = 0;
    let aTmp = '';
    let strayDuringThen: boolean | undefined;
    const build = (n: number, input: typeof inputA) =>
      pool.withUser((user, stopUserProcesses) =>
        runBuildspecJob(job(n, input), { artifacts, workDir: join(root, 'work'), log: () => undefined, signal: new AbortController().signal, ...(user ? { user } : {}), stopUserProcesses }, async (run: BuildspecRun) => {
          // Root reads the job's files only once nothing of the build runs.
          if (n === 1) {
            stray = Number(await readFile(join(shared, 'a.stray'), 'utf8'));
            aTmp = await readFile(join(shared, 'a.tmp'), 'utf8');
            strayDuringThen = pidAlive(stray);
          }
          return run;
        }),
      );
    try {
      // A waits for B to be done (told by root: B's own files in /tmp go when B ends).
      const [a, b] = await Promise.all([build(1, inputA), build(2, inputB).finally(() => writeFile(join(shared, 'b.done'), ''))]);
      expect(a.status).toBe('SUCCEEDED');
      expect(b.status).toBe('SUCCEEDED');
      expect(b.phases!.exportedVariables).toMatchObject({ ENVIRON: '0', SIGNAL: 'refused', TEMP: '0' });
      // A's temporary files were made in its own TMPDIR, not in /tmp.
      expect(aTmp.trim()).toMatch(new RegExp(`^${join(root, 'work')}/t-[0-9a-f]{8}$`));
      expect(b.phases!.exportedVariables.LISTING).toMatch(/Permission denied/);
      expect(stray).toBeGreaterThan(0);
      expect(strayDuringThen).toBe(false);
      await eventually(() => !pidAlive(stray));
    } finally {
      await pool.close();
    }
  });
});
