import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { FsArtifactStore, type ArtifactStore } from '@conveyor/artifacts';
import type { BuildJob } from '@conveyor/contracts';
import type { BuildspecRun } from './buildspec-job.js';
import { storeArtifacts } from './store-artifacts.js';
import { finishedBuild } from './testkit.js';

let dir: string;
let built: BuildspecRun;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'cv-store-'));
  built = await finishedBuild(join(dir, 'job', 'src'), { 'out/app.js': 'ok', 'out/lib/util.js': 'ok' }, 'artifacts:\n  files: ["out/**/*"]\n');
});
afterEach(() => rm(dir, { recursive: true, force: true }));

const job = { runId: 'run-store-1', stage: 'Build', attempt: 1 } as BuildJob;

describe('storeArtifacts', () => {
  it('stores the selected files as the stage artifact, and says so in the log', async () => {
    const lines: string[] = [];
    const stored = await storeArtifacts(job, built, { artifacts: new FsArtifactStore(join(dir, 'store')), log: (t) => lines.push(t) });
    expect(stored).toMatchObject({ kind: 'stored', artifact: { key: 'runs/run-store-1/Build-1.tar' } });
    expect(lines.join('')).toMatch(/^\[conveyor\] stored artifact runs\/run-store-1\/Build-1\.tar: 2 files, \d+ bytes\n$/);
  });

  it('a stage already stopped (its run cancelled) stores nothing and says why', async () => {
    const lines: string[] = [];
    const stored = await storeArtifacts(job, built, { artifacts: new FsArtifactStore(join(dir, 'store')), log: (t) => lines.push(t), signal: AbortSignal.abort('run cancelled') });
    expect(stored).toEqual({ kind: 'failed', message: 'artifact upload stopped: run cancelled' });
    expect(lines).toEqual(['[conveyor] artifact upload stopped: run cancelled\n']);
    expect(await readdir(dir)).toEqual(['job']); // no store made, no staging left
  });

  it('a stop while the artifact is being packed ends the upload, its staging removed', async () => {
    const stop = new AbortController();
    let packing: AbortSignal | undefined;
    // A store that packs until told to stop, as a large artifact would.
    const artifacts = {
      putFiles: (_key: string, _dir: string, _files: readonly string[], opts?: { signal?: AbortSignal }) => {
        packing = opts?.signal;
        return new Promise((_resolve, reject) => opts?.signal?.addEventListener('abort', () => reject(new Error('aborted'))));
      },
    } as unknown as ArtifactStore;
    const stored = storeArtifacts(job, built, { artifacts, log: () => undefined, signal: stop.signal });
    while (!packing) await new Promise((r) => setTimeout(r, 5));
    expect(await readdir(dir)).toContain('job.staging');
    stop.abort(new Error('stage job taken from this worker'));
    expect(await stored).toEqual({ kind: 'failed', message: 'artifact upload stopped: stage job taken from this worker' });
    expect(await readdir(dir)).toEqual(['job']);
  });
});
