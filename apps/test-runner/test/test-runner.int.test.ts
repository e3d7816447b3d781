import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FsArtifactStore } from '@conveyor/artifacts';
import { QUEUES, type TestJob } from '@conveyor/contracts';
import { inProcessStageService, StageHarness, testRedis, uniquePrefix } from '@conveyor/testing';
import { loadEnv } from '../src/env.js';
import { testJobHandler } from '../src/jobs/test-job.js';

let dir: string;
let store: FsArtifactStore;
let harness: StageHarness;
let service: ReturnType<typeof inProcessStageService<'test'>>;
let n = 0;

const junit = (cases: string) => `<?xml version="1.0"?>\n<testsuites><testsuite name="s">${cases}</testsuite></testsuites>\n`;

async function runTests(files: Record<string, string>) {
  n += 1;
  const src = join(dir, `src-${n}`);
  for (const [path, content] of Object.entries(files)) {
    await mkdir(dirname(join(src, path)), { recursive: true });
    await writeFile(join(src, path), content);
  }
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
    env: { variables: {} },
    timeoutMinutes: 5,
  };
  await harness.enqueue(QUEUES.test, job);
  return harness.result(job.jobId);
}

/** A buildspec whose command writes the given report, as a test tool would. */
const writesReport = (xml: string, extra = '') => ({
  'report.xml.in': xml,
  'buildspec.yml': `version: 0.2\nphases:\n  build:\n    commands:\n      - mkdir -p reports && cp report.xml.in reports/junit.xml${extra}\nreports:\n  unit:\n    files: [ 'reports/*.xml' ]\n`,
});

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'cv-test-'));
  const redis = await testRedis();
  const prefix = uniquePrefix('tr');
  const env = loadEnv({ REDIS_URL: redis.url, QUEUE_PREFIX: prefix, ARTIFACT_DIR: join(dir, 'artifacts'), WORK_DIR: join(dir, 'work'), LOG_LEVEL: 'silent' });
  store = new FsArtifactStore(env.ARTIFACT_DIR);
  service = inProcessStageService({
    service: 'test-runner',
    type: 'test',
    queueName: QUEUES.test,
    env,
    handler: ({ redis: r, prefix: p }) => testJobHandler({ artifacts: store, redis: r, prefix: p, workDir: env.WORK_DIR }),
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
  });
});
