import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

const repoRoot = resolve(import.meta.dirname, '..', '..', '..');
const runnerIndex = resolve(import.meta.dirname, '..', 'src', 'index.ts');
let dir: string;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'cv-junit-tsx-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

/*
 * The services run TypeScript through `node --import tsx` (ADR 0003), vitest through its own
 * transform: the JUnit parsing thread must load under both. The unit tests cover vitest; this runs
 * the reader the way a service does, in a process of its own, which must also exit when done.
 */
describe('JUnitReader under node --import tsx', () => {
  it('parses in its worker thread and the process exits', async () => {
    await writeFile(join(dir, 'a.xml'), await readFile(join(import.meta.dirname, 'fixtures', 'junit', 'failing.xml')));
    await writeFile(join(dir, 'bad.xml'), '<testsuite><testcase>');
    const script = join(dir, 'read.mts'); // .mts: no package.json of type module around it
    await writeFile(
      script,
      `import { JUnitReader, resolveFiles } from ${JSON.stringify(runnerIndex)};
const files = await resolveFiles(${JSON.stringify(dir)}, { files: ['*.xml'] });
const reader = new JUnitReader();
const summary = await reader.read(files, 'a.xml');
const error = await reader.read(files, 'bad.xml').catch((err: Error) => err.name + ': ' + err.message);
console.log(JSON.stringify({ total: summary.total, failed: summary.failed, error }));
await reader.close();
`,
    );
    const { stdout } = await promisify(execFile)(process.execPath, ['--import', 'tsx', script], { cwd: repoRoot, timeout: 30_000 });
    expect(JSON.parse(stdout)).toEqual({ total: 3, failed: 2, error: expect.stringMatching(/^JUnitError: malformed XML at line 1/) });
  });
});
