import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { artifactKey, FsArtifactStore } from '@conveyor/artifacts';
import type { DeployJob } from '@conveyor/contracts';
import { localDeployJob, type LocalTarget } from '../deploy-job.testkit.js';
import { createLogger } from '@conveyor/service-kit';
import type { DeploymentRecord } from '../domain/deployment-record.js';
import type { DeployContext } from '../ports.js';
import { DeploymentFiles } from './deployment-files.js';
import { LocalProcessTarget } from './local-process-target.js';
import { stopAllDeployments } from '../stop-all.js';

let root: string;
beforeEach(async () => {
  root = await mkdtemp(join(tmpdir(), 'cv-local-target-'));
});
afterEach(async () => {
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
});
