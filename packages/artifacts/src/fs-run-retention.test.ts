import { lstat, mkdir, mkdtemp, readFile, readlink, rm, stat, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { artifactKey, FsArtifactStore } from './fs-artifact-store.js';

let dir: string;
let store: FsArtifactStore;

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'cv-art-runs-'));
  store = new FsArtifactStore(join(dir, 'store'));
  await mkdir(join(dir, 'src', 'sub'), { recursive: true });
  await writeFile(join(dir, 'src', 'a.txt'), 'A');
  await writeFile(join(dir, 'src', 'sub', 'b.txt'), 'B');
});
afterEach(() => rm(dir, { recursive: true, force: true }));

describe('FsArtifactStore retention operations (listRuns, removeRun)', () => {
  const RUN_A = '11111111-aaaa-4aaa-8aaa-aaaaaaaaaaaa';
  const RUN_B = '22222222-bbbb-4bbb-8bbb-bbbbbbbbbbbb';

  it("lists the runs with artifacts and removes one run's whole, saying how many bytes it freed", async () => {
    expect(await store.listRuns()).toEqual([]); // no runs/ yet
    const a1 = await store.putFiles(artifactKey(RUN_A, 'Source', 1), join(dir, 'src'), ['a.txt']);
    const a2 = await store.putFiles(artifactKey(RUN_A, 'Build', 1), join(dir, 'src'), ['a.txt', 'sub/b.txt']);
    await store.putFiles(artifactKey(RUN_B, 'Source', 1), join(dir, 'src'), ['a.txt']);
    const listed = await store.listRuns();
    expect(listed.map((r) => r.runId).sort()).toEqual([RUN_A, RUN_B]);
    const modified = (await stat(join(dir, 'store', 'runs', RUN_A))).mtimeMs;
    expect(listed.find((r) => r.runId === RUN_A)?.modifiedAt).toBe(modified);

    expect(await store.removeRun(RUN_A)).toBe(a1.bytes + a2.bytes);
    await expect(stat(join(dir, 'store', 'runs', RUN_A))).rejects.toThrow();
    expect((await store.listRuns()).map((r) => r.runId)).toEqual([RUN_B]);
    // Removed already (another replica got there first): nothing to do, no error.
    expect(await store.removeRun(RUN_A)).toBeUndefined();
    // What is left still unpacks whole.
    await store.extractTo(await store.putFiles(artifactKey(RUN_B, 'Source', 1), join(dir, 'src'), ['a.txt']), join(dir, 'out'));
    expect(await readFile(join(dir, 'out', 'a.txt'), 'utf8')).toBe(await readFile(join(dir, 'src', 'a.txt'), 'utf8'));
  });

  it('refuses a run id that is not a plain id, and never lists, follows or removes what is not a run directory', async () => {
    const outside = join(dir, 'outside');
    await mkdir(join(outside, 'runs', 'x'), { recursive: true });
    await writeFile(join(outside, 'precious.txt'), 'keep me');
    await writeFile(join(outside, 'runs', 'x', 'precious.txt'), 'keep me too');
    await store.putFiles(artifactKey(RUN_A, 'Source', 1), join(dir, 'src'), ['a.txt']);
    const runs = join(dir, 'store', 'runs');
    // A link named like a run to a directory outside the store, a directory not named as a run, a file.
    const linked = '33333333-cccc-4ccc-8ccc-cccccccccccc';
    await symlink(outside, join(runs, linked));
    await mkdir(join(runs, 'Not_A_Run'));
    await writeFile(join(runs, 'Not_A_Run', 'f'), 'x');
    await writeFile(join(runs, '44444444-dddd-4ddd-8ddd-dddddddddddd'), 'a file');

    expect((await store.listRuns()).map((r) => r.runId)).toEqual([RUN_A]);
    for (const bad of ['..', '../outside', `${RUN_A}/..`, '../../outside', 'a/b', '', '.', 'Not_A_Run', `../${RUN_A}`, '/tmp']) {
      await expect(store.removeRun(bad), bad).rejects.toThrow(/invalid run id/);
    }
    expect(await store.removeRun(linked)).toBeUndefined();
    expect(await readFile(join(outside, 'precious.txt'), 'utf8')).toBe('keep me');
    expect(await readFile(join(outside, 'runs', 'x', 'precious.txt'), 'utf8')).toBe('keep me too');
    expect(await readlink(join(runs, linked))).toBe(outside);
    expect(await readFile(join(runs, 'Not_A_Run', 'f'), 'utf8')).toBe('x');
    // The run itself is still there: nothing above reached it.
    expect((await stat(join(runs, RUN_A))).isDirectory()).toBe(true);
  });

  it("finishes, an hour on, a removal that died midway, and never lists it as a run", async () => {
    await store.putFiles(artifactKey(RUN_A, 'Source', 1), join(dir, 'src'), ['a.txt']);
    const left = join(dir, 'store', 'runs', `.removing-${RUN_B}.0b6c1f9e-0000-4000-8000-000000000000`);
    await mkdir(left);
    await writeFile(join(left, 'Build-1.tar'), 'half removed');
    expect((await store.listRuns()).map((r) => r.runId)).toEqual([RUN_A]);
    expect(await readFile(join(left, 'Build-1.tar'), 'utf8')).toBe('half removed'); // it may be another replica's, under way
    const now = Date.now();
    const clock = vi.spyOn(Date, 'now').mockReturnValue(now + 3_600_000 + 60_000);
    try {
      expect((await store.listRuns()).map((r) => r.runId)).toEqual([RUN_A]);
    } finally {
      clock.mockRestore();
    }
    await expect(lstat(left)).rejects.toThrow();
  });

  it('removes a run directory holding a link without following it', async () => {
    await writeFile(join(dir, 'victim.txt'), 'keep me');
    await store.putFiles(artifactKey(RUN_A, 'Source', 1), join(dir, 'src'), ['a.txt']);
    await symlink(join(dir, 'victim.txt'), join(dir, 'store', 'runs', RUN_A, 'planted'));
    await symlink(join(dir, 'src'), join(dir, 'store', 'runs', RUN_A, 'planted-dir'));
    await store.removeRun(RUN_A);
    await expect(lstat(join(dir, 'store', 'runs', RUN_A))).rejects.toThrow();
    expect(await readFile(join(dir, 'victim.txt'), 'utf8')).toBe('keep me');
    expect(await readFile(join(dir, 'src', 'sub', 'b.txt'), 'utf8')).toBe('B');
  });
});
