import { mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { artifactKey, FsArtifactStore } from '@conveyor/artifacts';
import type { DeployJob } from '@conveyor/contracts';
import { localDeployJob, type LocalTarget } from '../deploy-job.testkit.js';
import { createLogger, PermanentJobError } from '@conveyor/service-kit';
import { versionName, type DeploymentRecord } from '../domain/deployment-record.js';
import type { DeployContext } from '../ports.js';
import { DeploymentFiles } from './deployment-files.js';
import { ownUser, type AppUsers } from './app-users.js';
import { LocalProcessTarget } from './local-process-target.js';
import { stopAllDeployments } from '../stop-all.js';

let root: string;
beforeEach(async () => {
  root = await mkdtemp(join(tmpdir(), 'cv-local-target-'));
});
afterEach(async () => {
  // What a failed test left running goes too.
  await stopAllDeployments(join(root, 'deployments'), 1000, { claimsDir: join(root, 'uid-claims') });
  await rm(root, { recursive: true, force: true });
});

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

/**
 * The files of deployments, with one await made to last until the command it records has been reaped:
 * the moment of the race fixed in `start` (a command that ends at once, its 'exit' event emitted while
 * the deployer awaited something) made certain instead of left to chance.
 */
class SlowRecordFiles extends DeploymentFiles {
  override async writeVersionRecord(versionDir: string, record: DeploymentRecord): Promise<void> {
    await untilReaped(record.pid);
    await super.writeVersionRecord(versionDir, record);
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
      files: new SlowRecordFiles(join(root, 'deployments')),
      artifacts,
      logger: createLogger('deployer-test', 'silent'),
      stopGraceMs: 1000,
      keepVersions: 2,
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
});

/** An artifact of APP, a server answering 200 on PORT. */
async function appArtifact(): Promise<{ artifacts: FsArtifactStore; input: DeployJob['input'] }> {
  const artifacts = new FsArtifactStore(join(root, 'artifacts'));
  const src = join(root, 'src');
  await mkdir(src, { recursive: true });
  await writeFile(join(src, 'server.mjs'), APP);
  return { artifacts, input: await artifacts.putFiles(artifactKey('run-app', 'Build', 1), src, ['server.mjs']) };
}

function localTarget(artifacts: FsArtifactStore, opts: { keepVersions?: number; users?: AppUsers } = {}): LocalProcessTarget {
  return new LocalProcessTarget({
    files: new DeploymentFiles(join(root, 'deployments')),
    artifacts,
    logger: createLogger('deployer-test', 'silent'),
    stopGraceMs: 1000,
    keepVersions: opts.keepVersions ?? 2,
    healthIntervalMs: 50,
    ...(opts.users ? { users: opts.users } : {}),
  });
}

const quietCtx = (): DeployContext => ({ log: () => undefined, signal: new AbortController().signal, cancelled: async () => false, wentLive: async () => undefined });
