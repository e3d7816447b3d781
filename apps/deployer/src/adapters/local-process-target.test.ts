import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { once } from 'node:events';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { artifactKey, FsArtifactStore } from '@conveyor/artifacts';
import type { DeployJob } from '@conveyor/contracts';
import { groupAlive, pidAlive, tcpListeners } from '@conveyor/procfs';
import { localDeployJob, type LocalTarget } from '../deploy-job.testkit.js';
import { createLogger, freePort, PermanentJobError } from '@conveyor/service-kit';
import { versionName } from '../domain/deployment-record.js';
import { processesWithEnv } from '../../test/service.js';
import type { DeployContext } from '../ports.js';
import { DeploymentFiles } from './deployment-files.js';
import { ownUser, type AppUsers } from './app-users.js';
import { LocalProcessTarget } from './local-process-target.js';
import { stopAllDeployments } from '../stop-all.js';

let root: string;
/** Processes a test started itself (not deployed): killed after it. */
const strangers: ChildProcess[] = [];
beforeEach(async () => {
  root = await mkdtemp(join(tmpdir(), 'cv-local-target-'));
});
afterEach(async () => {
  for (const s of strangers.splice(0)) s.kill('SIGKILL');
  // What a failed test left running goes too.
  await stopAllDeployments(join(root, 'deployments'), 1000, { claimsDir: join(root, 'uid-claims') });
  await rm(root, { recursive: true, force: true });
});

/** apps/deployer, where its sources resolve their packages. */
const DEPLOYER_DIR = fileURLToPath(new URL('../..', import.meta.url));

/** Until `pid` is gone from the process table: reaped, so Node has already emitted its 'exit' event. */
async function untilReaped(pid: number): Promise<void> {
  for (;;) {
    try {
      process.kill(pid, 0);
    } catch {
      return;
    }
    await new Promise((r) => setTimeout(r, 10));
  }
}

const APP = `
import { createServer } from 'node:http';
createServer((req, res) => { res.writeHead(200); res.end('ok'); }).listen(Number(process.env.PORT), '127.0.0.1');
`;

const deployJob = (runId: string, input: DeployJob['input'], target: LocalTarget) => localDeployJob({ runId, pipeline: 'race', input, target });

describe('LocalProcessTarget', () => {
  it('says which version went live before it stops the one replaced', async () => {
    const artifacts = new FsArtifactStore(join(root, 'artifacts'));
    const src = join(root, 'src');
    await mkdir(src);
    await writeFile(join(src, 'server.mjs'), APP);
    const input = await artifacts.putFiles(artifactKey('run-live', 'Build', 1), src, ['server.mjs']);
    const target = new LocalProcessTarget({ files: new DeploymentFiles(join(root, 'deployments')), artifacts, logger: createLogger('deployer-test', 'silent'), stopGraceMs: 1000, keepVersions: 2 });
    const live: { runId: string; url: string; previousServing: boolean }[] = [];
    let previous: string | undefined;
    const ctx: DeployContext = {
      log: () => undefined,
      signal: new AbortController().signal,
      cancelled: async () => false,
      wentLive: async ({ runId, url }) => {
        live.push({ runId, url, previousServing: previous !== undefined && (await fetch(previous).then((r) => r.ok, () => false)) });
      },
    };
    const first = await target.deploy(deployJob('run-live-1', input, {}), ctx);
    expect(first.status).toBe('deployed');
    previous = (first as { url: string }).url;
    const second = await target.deploy(deployJob('run-live-2', input, {}), ctx);
    expect(second.status).toBe('deployed');
    expect(live).toEqual([
      { runId: 'run-live-1', url: previous, previousServing: false },
      { runId: 'run-live-2', url: (second as { url: string }).url, previousServing: true },
    ]);
    await expect(fetch(previous)).rejects.toThrow();
    await stopAllDeployments(join(root, 'deployments'), 1000, { claimsDir: join(root, 'uid-claims') });
  }, 60_000);

  it('fails at once when the command has ended and been reaped before the health wait began', async () => {
    const artifacts = new FsArtifactStore(join(root, 'artifacts'));
    const src = join(root, 'src');
    await mkdir(src);
    await writeFile(join(src, 'version.txt'), 'v1');
    const input = await artifacts.putFiles(artifactKey('run-race', 'Build', 1), src, ['version.txt']);
    // Were the exit missed, the health wait would last its whole timeout: far beyond this test's.
    const job = deployJob('run-race', input, { command: 'echo "missing config" >&2; exit 3', healthTimeoutSeconds: 600 });
    const lines: string[] = [];
    const ctx: DeployContext = { log: (line) => lines.push(line), signal: new AbortController().signal, cancelled: async () => false, wentLive: async () => undefined };
    const target = new LocalProcessTarget({
      files: new DeploymentFiles(join(root, 'deployments')),
      artifacts,
      logger: createLogger('deployer-test', 'silent'),
      stopGraceMs: 1000,
      keepVersions: 2,
      // One await made to last until the command has been reaped: the moment of the race fixed in `start`
      // (a command that ends at once, its 'exit' event emitted while the deployer awaited something) made
      // certain instead of left to chance.
      commandStarted: (record) => untilReaped(record.pid),
    });
    const outcome = await target.deploy(job, ctx);
    expect(outcome.status).toBe('unhealthy');
    expect(outcome).toMatchObject({ message: expect.stringContaining('exited with code 3') });
    expect(outcome).toMatchObject({ message: expect.stringContaining('missing config') });
  }, 30_000);

  it('prunes after failed deploys too, keeping DEPLOY_KEEP_VERSIONS and never the version serving', async () => {
    const { artifacts, input } = await appArtifact();
    const released: string[] = [];
    // The deployer's own user, with the releases of version users (one per kept version) recorded.
    const users: AppUsers = { ...ownUser, release: async (pipeline, version) => void released.push(`${pipeline}/${version}`) };
    const target = localTarget(artifacts, { keepVersions: 2, users });
    const serving = await target.deploy(deployJob('run-serving', input, {}), quietCtx());
    expect(serving.status).toBe('deployed');
    for (const n of [1, 2, 3, 4]) {
      const failed = await target.deploy(deployJob(`run-fails-${n}`, input, { command: 'exit 3' }), quietCtx());
      expect(failed.status).toBe('unhealthy');
    }
    // The two newest (the last failure's output kept for a look), and the one serving, which keeps serving.
    expect((await readdir(join(root, 'deployments', 'race'))).filter((n) => n.startsWith('run-')).sort()).toEqual(
      [versionName('run-fails-3', 1), versionName('run-fails-4', 1), versionName('run-serving', 1)].sort(),
    );
    expect(released.sort()).toEqual([`race/${versionName('run-fails-1', 1)}`, `race/${versionName('run-fails-2', 1)}`]);
    await expect(fetch((serving as { url: string }).url).then((r) => r.status)).resolves.toBe(200);
  }, 60_000);

  it('never brings back a version a later run replaced, when its job is delivered again', async () => {
    const { artifacts, input } = await appArtifact();
    const target = localTarget(artifacts);
    const lines: string[] = [];
    const ctx: DeployContext = { ...quietCtx(), log: (line) => lines.push(line) };
    // Run A goes live and its deployer dies before completing A's job; run B then goes live.
    const a = await target.deploy(deployJob('run-older', input, {}), ctx);
    const b = await target.deploy(deployJob('run-newer', input, {}), ctx);
    expect([a.status, b.status]).toEqual(['deployed', 'deployed']);
    const again = await target.deploy(deployJob('run-older', input, {}), ctx);
    expect(again).toEqual({ status: 'superseded', url: (a as { url: string }).url, by: { runId: 'run-newer', url: (b as { url: string }).url } });
    expect(lines.at(-1)).toMatch(/run run-newer's version went live after it .*nothing started or stopped/);
    // B still serves; A was not started again.
    expect((await new DeploymentFiles(join(root, 'deployments')).readCurrent('race'))?.runId).toBe('run-newer');
    await expect(fetch((b as { url: string }).url).then((r) => r.status)).resolves.toBe(200);
    await expect(fetch((a as { url: string }).url)).rejects.toThrow();
  }, 60_000);

  it('fails for good, starting nothing, on an artifact that cannot be unpacked', async () => {
    const artifacts = new FsArtifactStore(join(root, 'artifacts'));
    await writeFile(join(root, 'corrupt.tar'), Buffer.alloc(2048, 0x41));
    const input = await artifacts.putTar(artifactKey('run-corrupt', 'Build', 1), join(root, 'corrupt.tar'));
    const deploying = localTarget(artifacts).deploy(deployJob('run-corrupt', input, {}), quietCtx());
    // Not retried: unpacking it again would fail again.
    await expect(deploying).rejects.toBeInstanceOf(PermanentJobError);
    await expect(deploying).rejects.toThrow(/cannot be unpacked: .*nothing was started and no earlier version of this pipeline is serving/);
  }, 30_000);

  it("never takes a version live on the 200 of another process holding its port: says whose, stops the version, keeps the previous one", async () => {
    const { artifacts, input } = await appArtifact();
    // A real stranger: another process's HTTP server, answering 200 on every path.
    const stranger = spawn(process.execPath, ['-e', "require('http').createServer((q, s) => s.end('not the version')).listen(0, '127.0.0.1', function () { console.log(this.address().port) })"], { stdio: ['ignore', 'pipe', 'inherit'] });
    strangers.push(stranger);
    const port = Number(await new Promise<string>((r) => stranger.stdout!.once('data', (d: Buffer) => r(d.toString().trim()))));
    // The ports the deployer hands out: the stranger's when a test puts it here, a free one otherwise.
    const handOut: number[] = [];
    const target = localTarget(artifacts, { pickPort: async () => handOut.shift() ?? freePort() });
    const serving = await target.deploy(deployJob('run-serving', input, {}), quietCtx());
    expect(serving.status).toBe('deployed');
    const files = new DeploymentFiles(join(root, 'deployments'));
    // Given the stranger's port (taken between the pick and the bind): a version that never binds it, and
    // one that listens elsewhere. Either way only the stranger answers on PORT.
    for (const [runId, command] of [
      ['run-sleeps', 'exec sleep 60'],
      ['run-elsewhere', 'PORT=0 exec node server.mjs'],
    ] as const) {
      handOut.push(port);
      const outcome = await target.deploy(deployJob(runId, input, { command, healthTimeoutSeconds: 20 }), quietCtx());
      expect(outcome.status, runId).toBe('unhealthy');
      const message = (outcome as { message: string }).message;
      expect(message).toContain(`/healthz answered 200 on port ${port}, but the socket listening there (127.0.0.1:${port}) belongs to pid ${stranger.pid} (node), not to this version's process group`);
      expect(message).toContain('this version was not taken live and was stopped; the previous version keeps serving');
      const record = await files.readVersionRecord(join(root, 'deployments', 'race', versionName(runId, 1)));
      expect(record?.port).toBe(port);
      expect(groupAlive(record!.pgid)).toBe(false);
    }
    // The stranger is nobody's to stop; the previous version still serves, and is still the one recorded.
    expect(pidAlive(stranger.pid!)).toBe(true);
    await expect(fetch((serving as { url: string }).url).then((r) => r.status)).resolves.toBe(200);
    expect((await files.readCurrent('race'))?.runId).toBe('run-serving');
  }, 60_000);

  it("starts the command without the deployer's shell startup files: its ~/.bashrc can neither move it nor change its PORT", async () => {
    const { artifacts, input } = await appArtifact();
    // The gate's stdin is a socket, which a plain `bash -c` would take for an ssh session and source
    // ~/.bashrc for; this one says so if sourced, and would send the version to another port and directory.
    const home = join(root, 'home');
    await mkdir(home);
    await writeFile(join(home, '.bashrc'), `touch "${join(home, 'sourced')}"\nexport PORT=1 CONVEYOR_RUN_ID=forged\ncd /\n`);
    const target = localTarget(artifacts, { hostEnv: { PATH: process.env.PATH, HOME: home } });
    const outcome = await target.deploy(deployJob('run-bashrc', input, { command: 'echo "cwd=$PWD port=$PORT run=$CONVEYOR_RUN_ID" > seen.txt; exec node server.mjs' }), quietCtx());
    expect(outcome.status, JSON.stringify(outcome)).toBe('deployed');
    expect(existsSync(join(home, 'sourced'))).toBe(false);
    const app = join(root, 'deployments', 'race', versionName('run-bashrc', 1), 'app');
    const port = new URL((outcome as { url: string }).url).port;
    expect((await readFile(join(app, 'seen.txt'), 'utf8')).trim()).toBe(`cwd=${app} port=${port} run=run-bashrc`);
  }, 30_000);

  it.runIf(existsSync('/proc/net/tcp6'))('takes a version listening on the IPv6 wildcard for the one answering', async () => {
    const { artifacts, input } = await appArtifact();
    const command = `exec node -e "require('http').createServer((q, s) => s.end('ok')).listen(Number(process.env.PORT), '::')"`;
    const outcome = await localTarget(artifacts).deploy(deployJob('run-dual-stack', input, { command }), quietCtx());
    expect(outcome.status, JSON.stringify(outcome)).toBe('deployed');
  }, 30_000);

  it('leaves nothing running when its deployer is killed between starting a version and recording it; delivered again, the job runs one version', async () => {
    const { artifacts, input } = await appArtifact();
    const job = deployJob('run-killed', input, {});
    const pidFile = join(root, 'started.pid');
    // A deployer process of its own, killed (SIGKILL: nothing of it runs after) the moment it would
    // write the record of the version it has just started.
    const script = `
      const { writeFileSync } = await import('node:fs');
      const { FsArtifactStore } = await import('@conveyor/artifacts');
      const { createLogger } = await import('@conveyor/service-kit');
      const { DeploymentFiles } = await import('./src/adapters/deployment-files.ts');
      const { LocalProcessTarget } = await import('./src/adapters/local-process-target.ts');
      class KilledBeforeRecording extends DeploymentFiles {
        async writeVersionRecord(dir, record) {
          writeFileSync(process.env.PID_FILE, record.pid + ' ' + record.port);
          process.kill(process.pid, 'SIGKILL');
          await new Promise(() => {});
        }
      }
      const target = new LocalProcessTarget({ files: new KilledBeforeRecording(process.env.DEPLOY_DIR), artifacts: new FsArtifactStore(process.env.ARTIFACT_DIR), logger: createLogger('killed-deployer', 'silent'), stopGraceMs: 1000, keepVersions: 2 });
      await target.deploy(JSON.parse(process.env.JOB), { log: () => {}, signal: new AbortController().signal, cancelled: async () => false, wentLive: async () => {} });
    `;
    const env = { ...process.env, PID_FILE: pidFile, DEPLOY_DIR: join(root, 'deployments'), ARTIFACT_DIR: artifacts.root, JOB: JSON.stringify(job) };
    const killed = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], { cwd: DEPLOYER_DIR, env, stdio: ['ignore', 'inherit', 'inherit'] });
    const [, signal] = await once(killed, 'exit');
    expect(signal).toBe('SIGKILL');
    const [first, port] = (await readFile(pidFile, 'utf8')).split(' ').map(Number) as [number, number];
    expect(first).toBeGreaterThan(1);
    // Settled before the job comes again: what the killed deployer started has ended, or it serves on the
    // PORT it was given (as an unrecorded command would, which nothing would ever stop).
    await expect.poll(() => !groupAlive(first) || tcpListeners(port).length > 0, { timeout: 10_000, interval: 50 }).toBe(true);

    // BullMQ delivers the job again, here to another deployer.
    const again = await localTarget(artifacts).deploy(job, quietCtx());
    expect(again.status).toBe('deployed');
    await expect(fetch((again as { url: string }).url).then((r) => r.status)).resolves.toBe(200);
    // What the killed deployer started is gone, and one version of the run runs: the one just recorded.
    await expect.poll(() => groupAlive(first), { timeout: 5000, interval: 50 }).toBe(false);
    const running = await processesWithEnv(`CONVEYOR_RUN_ID=${job.runId}`);
    expect(running).toHaveLength(1);
    expect(running[0]).toBe((await new DeploymentFiles(join(root, 'deployments')).readCurrent('race'))?.pid);
  }, 60_000);
});

/** An artifact of APP, a server answering 200 on PORT. */
async function appArtifact(): Promise<{ artifacts: FsArtifactStore; input: DeployJob['input'] }> {
  const artifacts = new FsArtifactStore(join(root, 'artifacts'));
  const src = join(root, 'src');
  await mkdir(src, { recursive: true });
  await writeFile(join(src, 'server.mjs'), APP);
  return { artifacts, input: await artifacts.putFiles(artifactKey('run-app', 'Build', 1), src, ['server.mjs']) };
}

function localTarget(artifacts: FsArtifactStore, opts: { keepVersions?: number; users?: AppUsers; pickPort?: () => Promise<number>; hostEnv?: Record<string, string | undefined> } = {}): LocalProcessTarget {
  return new LocalProcessTarget({
    files: new DeploymentFiles(join(root, 'deployments')),
    artifacts,
    logger: createLogger('deployer-test', 'silent'),
    stopGraceMs: 1000,
    keepVersions: opts.keepVersions ?? 2,
    healthIntervalMs: 50,
    ...(opts.users ? { users: opts.users } : {}),
    ...(opts.pickPort ? { pickPort: opts.pickPort } : {}),
    ...(opts.hostEnv ? { hostEnv: opts.hostEnv } : {}),
  });
}

const quietCtx = (): DeployContext => ({ log: () => undefined, signal: new AbortController().signal, cancelled: async () => false, wentLive: async () => undefined });
