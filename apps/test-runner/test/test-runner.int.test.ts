import { chmod, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FsArtifactStore } from '@conveyor/artifacts';
import { QUEUES, type TestJob } from '@conveyor/contracts';
import type { BuildUsers } from '@conveyor/runner';
import { inProcessStageService, junitXml, StageHarness, testRedis, uniquePrefix, writeFiles } from '@conveyor/testing';
import { loadEnv } from '../src/env.js';
import { testJobHandler } from '../src/jobs/test-job.js';

let dir: string;
let store: FsArtifactStore;
let harness: StageHarness;
let service: ReturnType<typeof inProcessStageService<'test'>>;
let n = 0;

const isRoot = process.getuid?.() === 0;
/** Who the next build runs as: the service itself, or nobody (as a root service runs each build as a user of its own). */
let users: BuildUsers | undefined;
const asNobody: BuildUsers = { withUser: (fn) => fn({ uid: 65534, gid: 65534 }, async () => undefined), close: async () => undefined, summary: 'builds run as nobody', ownIds: () => [65534] };

const junit = junitXml;

async function runTests(files: Record<string, string>, as: { nobody?: boolean; variables?: Record<string, string>; oldControlPlane?: boolean } = {}) {
  n += 1;
  const src = join(dir, `src-${n}`);
  await writeFiles(src, files);
  const runId = `run-test-${n}-0000`;
  const job: TestJob = {
    v: 1,
    type: 'test',
    jobId: `${runId}.Test.1`,
    runId,
    runNumber: 1,
    pipeline: 'demo',
    stage: 'Test',
    stageIndex: 2,
    attempt: 1,
    trigger: { type: 'manual', ref: 'refs/heads/main' },
    commit: 'c'.repeat(40),
    repository: 'file:///repo',
    input: await store.putFiles(`runs/${runId}/in.tar`, src, Object.keys(files)),
    buildspec: 'buildspec.yml',
    env: { variables: as.variables ?? {} },
    timeoutMinutes: 5,
    ...(as.oldControlPlane ? {} : { storeArtifacts: true as const }),
  };
  users = as.nobody ? asNobody : undefined;
  try {
    await harness.enqueue(QUEUES.test, job);
    return await harness.result(job.jobId);
  } finally {
    users = undefined;
  }
}

/** A buildspec whose command writes the given report, as a test tool would. */
const writesReport = (xml: string, extra = '') => ({
  'report.xml.in': xml,
  'buildspec.yml': `version: 0.2\nphases:\n  build:\n    commands:\n      - mkdir -p reports && cp report.xml.in reports/junit.xml${extra}\nreports:\n  unit:\n    files: [ 'reports/*.xml' ]\n`,
});

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'cv-test-'));
  await chmod(dir, 0o755); // mkdtemp makes it 0700: a build's user could not reach the work directory
  const redis = await testRedis();
  const prefix = uniquePrefix('tr');
  const env = loadEnv({ REDIS_URL: redis.url, QUEUE_PREFIX: prefix, ARTIFACT_DIR: join(dir, 'artifacts'), WORK_DIR: join(dir, 'work'), LOG_LEVEL: 'silent' });
  store = new FsArtifactStore(env.ARTIFACT_DIR);
  service = inProcessStageService({
    service: 'test-runner',
    type: 'test',
    queueName: QUEUES.test,
    env,
    handler:
      ({ redis: r, prefix: p }) =>
      (job, ctx) =>
        testJobHandler({ artifacts: store, redis: r, prefix: p, workDir: env.WORK_DIR, ...(users ? { users } : {}) })(job, ctx),
  });
  harness = service.harness;
});

afterAll(async () => {
  await service.stop();
  await rm(dir, { recursive: true, force: true });
  await (await testRedis()).stop();
});

describe('test stage', () => {
  it('counts the JUnit report and succeeds when every case passes', async () => {
    const result = await runTests(writesReport(junit('<testcase name="a"/><testcase name="b"/><testcase name="c"><skipped/></testcase>')));
    expect(result.status).toBe('SUCCEEDED');
    expect(result.output.tests).toEqual({ total: 3, passed: 2, failed: 0, skipped: 1 });
  });

  it('a failed test case fails the stage even when the command succeeded, naming the case', async () => {
    const result = await runTests(writesReport(junit('<testcase name="ok"/><testcase classname="math" name="adds"><failure message="expected 3 got 4"/></testcase><testcase name="boom"><error message="crash"/></testcase>')));
    expect(result.status).toBe('FAILED');
    expect(result.output.tests).toEqual({ total: 3, passed: 1, failed: 2, skipped: 0 });
    expect(result.message).toContain('2 of 3 tests failed');
    expect(result.output.failedTests).toEqual(expect.arrayContaining([expect.objectContaining({ name: 'adds', message: 'expected 3 got 4' })]));
  });

  it('a failing command fails the stage and its report is still counted', async () => {
    const result = await runTests(writesReport(junit('<testcase name="a"/>'), ' && exit 1'));
    expect(result.status).toBe('FAILED');
    expect(result.output.tests!.total).toBe(1);
  });

  it('a report group that matches no file, or a file that is not JUnit, fails the stage with the reason', async () => {
    const none = await runTests({ 'buildspec.yml': "version: 0.2\nphases: { build: { commands: [ 'true' ] } }\nreports: { unit: { files: [ 'reports/*.xml' ] } }\n" });
    expect(none.status).toBe('FAILED');
    expect(none.message).toMatch(/reports\.unit/);
    const junk = await runTests(writesReport('this is not xml <<<'));
    expect(junk.status).toBe('FAILED');
    expect(junk.message).toMatch(/reports\/junit\.xml: malformed XML/); // the file is named
  });

  it('stores its artifacts (a coverage report, say) as the build stage does, beside its counts; a failed upload fails it', async () => {
    const files = writesReport(junit('<testcase name="a"/>'), ' && mkdir -p coverage && echo "lines 93%" > coverage/summary.txt');
    files['buildspec.yml'] += 'artifacts:\n  files: [ "coverage/**/*" ]\n';
    const result = await runTests(files);
    expect(result.status, result.message).toBe('SUCCEEDED');
    expect(result.output.tests).toEqual({ total: 1, passed: 1, failed: 0, skipped: 0 });
    expect(result.output.artifact).toMatchObject({ key: `runs/run-test-${n}-0000/Test-1.tar` });
    const out = join(dir, `unpacked-${n}`);
    await store.extractTo(result.output.artifact!, out);
    expect(await readFile(join(out, 'coverage', 'summary.txt'), 'utf8')).toBe('lines 93%\n');

    // Files that match nothing, in a test that passed: the upload fails, and so does the stage, its counts kept.
    const missing = writesReport(junit('<testcase name="a"/>'));
    missing['buildspec.yml'] += 'artifacts:\n  files: [ "coverage/**/*" ]\n';
    const failed = await runTests(missing);
    expect(failed.status).toBe('FAILED');
    expect(failed.message).toMatch(/^artifact upload failed: /);
    expect(failed.output.tests).toEqual({ total: 1, passed: 1, failed: 0, skipped: 0 });
    expect(failed.output.artifact).toBeUndefined();

    // A job from a control plane that would hand this stage's artifact to the next stage: none is stored.
    const old = await runTests(missing, { oldControlPlane: true });
    expect(old.status, old.message).toBe('SUCCEEDED');
    expect(old.output.artifact).toBeUndefined();
  });
});

/* A build running as another user owns its workspace, and the directory around it, when root reads its reports. */
describe.runIf(isRoot)('test stage, for a build running as another user', () => {
  it('a report that leads to a FIFO fails its group instead of blocking the runner; the other groups are counted', async () => {
    const result = await runTests(
      {
        'report.xml.in': junit('<testcase name="a"/><testcase name="b"/>'),
        'buildspec.yml': `version: 0.2
phases:
  build:
    commands:
      - mkdir reports ok && mkfifo reports/pipe && ln -s pipe reports/junit.xml
      - cp report.xml.in ok/junit.xml && ln -s junit.xml ok/alias.xml
reports:
  unit:
    files: [ 'reports/*.xml' ]
  ok:
    files: [ 'ok/*.xml' ]
`,
      },
      { nobody: true },
    );
    expect(result.status).toBe('FAILED');
    expect(result.message).toBe('reports/junit.xml is a FIFO, not a regular file; it is not read');
    expect(result.output.tests).toEqual({ total: 4, passed: 4, failed: 0, skipped: 0 });
  }, 30_000);

  it('does not read the reports of a workspace the build replaced with a symlink', async () => {
    const secret = join(dir, 'secret-1');
    await mkdir(secret, { mode: 0o700 });
    await writeFile(join(secret, 'secret.xml'), junit('<testcase name="TOPSECRET"><failure message="TOPSECRET"/></testcase>'));
    const result = await runTests(
      { 'buildspec.yml': "version: 0.2\nphases:\n  build:\n    commands:\n      - cd .. && mv src src.old && ln -s \"$SECRET_DIR\" src\nreports:\n  unit:\n    files: [ '*.xml' ]\n" },
      { nobody: true, variables: { SECRET_DIR: secret } },
    );
    expect(result.status).toBe('FAILED');
    expect(result.message).toMatch(/^reports\.unit: the workspace .*src was replaced by a symlink; nothing is read from it$/);
    expect(JSON.stringify(result)).not.toContain('TOPSECRET');
  });
});
