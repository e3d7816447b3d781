import { chmod, mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FsArtifactStore } from '@conveyor/artifacts';
import { QUEUES, type BuildJob } from '@conveyor/contracts';
import type { BuildUsers } from '@conveyor/runner';
import { inProcessStageService, junitXml, StageHarness, testRedis, uniquePrefix, writeFiles } from '@conveyor/testing';
import { loadEnv } from '../src/env.js';
import { buildJobHandler } from '../src/jobs/build-job.js';

let dir: string;
let store: FsArtifactStore;
let harness: StageHarness;
let service: ReturnType<typeof inProcessStageService<'build'>>;
let n = 0;

const isRoot = process.getuid?.() === 0;
/** Who the next build runs as: the service itself, or nobody (as a root service runs each build as a user of its own). */
let users: BuildUsers | undefined;
const asNobody: BuildUsers = { withUser: (fn) => fn({ uid: 65534, gid: 65534 }, async () => undefined), close: async () => undefined, summary: 'builds run as nobody', ownIds: () => [65534] };

const junit = junitXml;

async function sourceArtifact(files: Record<string, string>) {
  const src = join(dir, `src-${++n}`);
  await writeFiles(src, files);
  return store.putFiles(`runs/test/src-${n}.tar`, src, Object.keys(files));
}

async function build(files: Record<string, string>, over: Partial<BuildJob> = {}, as: { nobody?: boolean } = {}) {
  const runId = `run-build-${n + 1}-0000`;
  const job: BuildJob = {
    v: 1,
    type: 'build',
    jobId: `${runId}.Build.1`,
    runId,
    runNumber: 42,
    pipeline: 'demo',
    stage: 'Build',
    stageIndex: 1,
    attempt: 1,
    trigger: { type: 'webhook', ref: 'refs/heads/feature/$(touch /tmp/conveyor-pwned)', commit: 'c'.repeat(40), previousCommit: 'b'.repeat(40) },
    commit: 'c'.repeat(40),
    repository: 'file:///repo',
    input: await sourceArtifact(files),
    buildspec: 'buildspec.yml',
    env: { variables: { FROM_STAGE: 'stage-wins' } },
    timeoutMinutes: 5,
    ...over,
  };
  users = as.nobody ? asNobody : undefined;
  try {
    await harness.enqueue(QUEUES.build, job);
    return { job, result: await harness.result(job.jobId), log: () => harness.log(job.jobId) };
  } finally {
    users = undefined;
  }
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'cv-build-'));
  await chmod(dir, 0o755); // mkdtemp makes it 0700: a build's user could not reach the work directory
  const redis = await testRedis();
  const prefix = uniquePrefix('build');
  const env = loadEnv({ REDIS_URL: redis.url, QUEUE_PREFIX: prefix, ARTIFACT_DIR: join(dir, 'artifacts'), ARTIFACT_MAX_BYTES: String(64 * 1024 * 1024), WORK_DIR: join(dir, 'work'), LOG_LEVEL: 'silent' });
  store = new FsArtifactStore(env.ARTIFACT_DIR, { maxBytes: env.ARTIFACT_MAX_BYTES });
  service = inProcessStageService({
    service: 'build',
    type: 'build',
    queueName: QUEUES.build,
    env,
    handler:
      ({ redis: r, prefix: p }) =>
      (job, ctx) =>
        buildJobHandler({ artifacts: store, redis: r, prefix: p, workDir: env.WORK_DIR, ...(users ? { users } : {}) })(job, ctx),
  });
  harness = service.harness;
});

afterAll(async () => {
  await service.stop();
  await rm(dir, { recursive: true, force: true });
  await (await testRedis()).stop();
});

describe('build stage', () => {
  it('runs the phases with CodeBuild variables and stores artifacts.files', async () => {
    const { result, log } = await build({
      'buildspec.yml': `version: 0.2
env:
  variables: { FROM_STAGE: buildspec-loses, GREETING: hello }
  exported-variables: [VERSION]
phases:
  build:
    commands:
      - mkdir -p out/nested
      - echo "$GREETING $FROM_STAGE $CODEBUILD_BUILD_NUMBER $CODEBUILD_RESOLVED_SOURCE_VERSION" > out/nested/info.txt
      - echo "$CODEBUILD_WEBHOOK_TRIGGER" > out/trigger.txt
      - VERSION=1.2.3
artifacts:
  base-directory: out
  files: ['**/*']
`,
    });
    expect(result).toMatchObject({ status: 'SUCCEEDED', output: { exportedVariables: { VERSION: '1.2.3' } } });
    const unpacked = join(dir, 'unpacked-1');
    await store.extractTo(result.output.artifact!, unpacked);
    expect((await readdir(unpacked, { recursive: true })).sort()).toEqual(['nested', 'nested/info.txt', 'trigger.txt']);
    const { readFile } = await import('node:fs/promises');
    expect(await readFile(join(unpacked, 'nested/info.txt'), 'utf8')).toBe(`hello stage-wins 42 ${'c'.repeat(40)}\n`);
    // The branch name reached the build as data, never as shell text.
    expect(await readFile(join(unpacked, 'trigger.txt'), 'utf8')).toBe('branch/feature/$(touch /tmp/conveyor-pwned)\n');
    expect(await log()).toContain('[conveyor] phase build SUCCEEDED');
  });

  it('a failing command fails the build, post_build still runs, artifacts are still uploaded', async () => {
    const { result, log } = await build({
      'buildspec.yml': `version: 0.2
phases:
  build:
    commands: [ "echo partial > partial.txt", "exit 7", "echo never" ]
  post_build:
    commands: [ 'echo "succeeding=$CODEBUILD_BUILD_SUCCEEDING"' ]
artifacts:
  files: [partial.txt]
`,
    });
    expect(result.status).toBe('FAILED');
    expect(result.message).toMatch(/build/);
    expect(result.output.artifact!.bytes).toBeGreaterThan(0);
    const text = await log();
    expect(text).toContain('succeeding=0');
    expect(text).not.toContain('never\n');
  });

  it('an invalid buildspec fails the run with a message naming the field', async () => {
    const { result } = await build({ 'buildspec.yml': 'version: 0.2\nphases:\n  build:\n    commands: { not: a-list }\n' });
    expect(result.status).toBe('FAILED');
    expect(result.message).toContain('phases.build.commands');
  });

  it('refuses features it cannot honour instead of ignoring them', async () => {
    const { result } = await build({ 'buildspec.yml': 'version: 0.2\nenv:\n  secrets-manager:\n    TOKEN: prod/token:key\nphases:\n  build:\n    commands: [ "true" ]\n' });
    expect(result.status).toBe('FAILED');
    expect(result.message).toContain('env.secrets-manager');
  });

  it('a buildspec path may not leave the source, and a missing one is named', async () => {
    const escape = await build({ 'buildspec.yml': 'version: 0.2\nphases: { build: { commands: [ "true" ] } }\n' }, { buildspec: '../../etc/passwd' });
    expect(escape.result).toMatchObject({ status: 'FAILED', message: expect.stringContaining('outside the source') });
    const missing = await build({ 'README.md': 'no buildspec here\n' });
    expect(missing.result).toMatchObject({ status: 'FAILED', message: 'buildspec buildspec.yml not found in the source' });
    // A name that starts with two dots is in the source.
    const dotted = await build({ '..ci.yml': 'version: 0.2\nphases: { build: { commands: [ "true" ] } }\n' }, { buildspec: '..ci.yml' });
    expect(dotted.result.status, dotted.result.message).toBe('SUCCEEDED');
  });

  it('fails, naming ARTIFACT_MAX_BYTES, when its artifact is larger (a sparse file counted as stored, expanded), storing nothing', async () => {
    const { job, result, log } = await build({ 'buildspec.yml': "version: 0.2\nphases: { build: { commands: [ 'truncate -s 1G big.bin', 'echo small > small.txt' ] } }\nartifacts: { files: [ '**/*' ] }\n" });
    expect(result).toMatchObject({ status: 'FAILED', message: 'artifact upload failed: artifact is larger than ARTIFACT_MAX_BYTES (67108864 bytes, 64 MiB)' });
    expect(result.output.artifact).toBeUndefined();
    expect(await log()).toContain('artifact is larger than ARTIFACT_MAX_BYTES');
    const names = await readdir(join(dir, 'artifacts', 'runs', job.runId), { recursive: true }).catch(() => [] as string[]);
    expect(names).toEqual([]);
  });

  it('counts its reports without gating on them: a failed case leaves the build SUCCEEDED, with the counts and the report lines', async () => {
    const { result, log } = await build({
      'buildspec.yml': `version: 0.2
phases:
  build:
    commands:
      - mkdir -p reports dist && echo app > dist/app.txt
      - cp report.xml.in reports/junit.xml
reports:
  unit:
    files: [ 'reports/*.xml' ]
artifacts:
  base-directory: dist
  files: [ '**/*' ]
`,
      'report.xml.in': junit('<testcase name="ok"/><testcase classname="math" name="adds"><failure message="expected 3 got 4"/></testcase><testcase name="later"><skipped/></testcase>'),
    });
    expect(result.status).toBe('SUCCEEDED');
    expect(result.message).toBeUndefined();
    expect(result.output.tests).toEqual({ total: 3, passed: 1, failed: 1, skipped: 1 });
    expect(result.output.failedTests).toEqual([{ suite: 'math', name: 'adds', message: 'expected 3 got 4' }]);
    expect(result.output.artifact!.bytes).toBeGreaterThan(0);
    const text = await log();
    expect(text).toContain('[conveyor] report unit: reports/junit.xml: 1 passed, 1 failed, 1 skipped\n');
    expect(text).toContain('[conveyor] FAILED math › adds: expected 3 got 4\n');
    expect(text).toContain("[conveyor] reports: 1 of 3 tests failed (reports do not decide a build stage's status; a test stage's do)\n");
    // Reports are read after the artifact is stored (CodeBuild's UPLOAD_ARTIFACTS comes first too).
    expect(text.indexOf('[conveyor] stored artifact')).toBeLessThan(text.indexOf('[conveyor] report unit'));
  });

  it('a report group that matches no file leaves the build SUCCEEDED, the problem logged', async () => {
    const { result, log } = await build({ 'buildspec.yml': "version: 0.2\nphases: { build: { commands: [ 'true' ] } }\nreports: { unit: { files: [ 'reports/*.xml' ] } }\n" });
    expect(result.status).toBe('SUCCEEDED');
    expect(result.message).toBeUndefined();
    expect(result.output.tests).toEqual({ total: 0, passed: 0, failed: 0, skipped: 0 });
    expect(await log()).toMatch(/\[conveyor\] report unit: reports\.unit.* \(reports do not decide a build stage's status; a test stage's do\)\n/);
  });

  it('a failed build still has its reports counted, and stays FAILED for its phases alone', async () => {
    const { result } = await build({
      'buildspec.yml': "version: 0.2\nphases:\n  build:\n    commands: [ 'cp report.xml.in junit.xml', 'exit 3' ]\nreports:\n  unit:\n    files: [ junit.xml ]\n",
      'report.xml.in': junit('<testcase name="a"/><testcase name="b"/>'),
    });
    expect(result.status).toBe('FAILED');
    expect(result.message).not.toMatch(/test|report/);
    expect(result.output.tests).toEqual({ total: 2, passed: 2, failed: 0, skipped: 0 });
  });

  it('a build that declares no reports has no test counts, whatever JUnit files it leaves', async () => {
    const { result, log } = await build({
      'buildspec.yml': "version: 0.2\nphases: { build: { commands: [ 'mkdir -p reports && cp report.xml.in reports/junit.xml' ] } }\n",
      'report.xml.in': junit('<testcase name="a"><failure/></testcase>'),
    });
    expect(result.status).toBe('SUCCEEDED');
    expect(result.output).not.toHaveProperty('tests');
    expect(result.output).not.toHaveProperty('failedTests');
    expect(await log()).not.toContain('[conveyor] report');
  });

  it('fails when artifacts.files matches nothing after a successful build', async () => {
    const { result } = await build({ 'buildspec.yml': "version: 0.2\nphases: { build: { commands: [ 'true' ] } }\nartifacts: { files: [ 'dist/**/*' ] }\n" });
    expect(result.status).toBe('FAILED');
    expect(result.message).toMatch(/artifact upload failed/);
  });
});

/*
 * A build running as another user owns its job directory (`<work>/<job>-<hex>/`, the workspace is its
 * `src/`), and may leave symlinks there for root to follow when it stores the artifact.
 */
describe.runIf(isRoot)('build stage, for a build running as another user', () => {
  /** A root-only directory holding a file, as /etc holds /etc/shadow. */
  async function rootOnly(name: string, file: string, text: string): Promise<string> {
    const path = join(dir, name);
    await mkdir(path, { mode: 0o700 });
    await writeFile(join(path, file), text);
    return path;
  }

  it('stores a discard-paths artifact from a staging directory of its own: root does not copy through the build\'s artifact-staging symlink', async () => {
    const victim = await rootOnly('victim-1', 'a.txt', 'original\n');
    const { result } = await build(
      {
        'buildspec.yml': `version: 0.2
phases:
  build:
    commands:
      - mkdir -p out/sub && echo built > out/sub/a.txt && ln -s a.txt out/link.txt
      - ln -s "$VICTIM_DIR" ../artifact-staging
artifacts:
  files: ['out/**/*']
  discard-paths: yes
`,
      },
      { env: { variables: { VICTIM_DIR: victim } } },
      { nobody: true },
    );
    expect(await readFile(join(victim, 'a.txt'), 'utf8')).toBe('original\n');
    expect((await readdir(victim)).sort()).toEqual(['a.txt']);
    expect(result.status).toBe('SUCCEEDED');
    const unpacked = join(dir, 'unpacked-staging');
    await store.extractTo(result.output.artifact!, unpacked);
    expect(await readFile(join(unpacked, 'a.txt'), 'utf8')).toBe('built\n');
    expect(await readFile(join(unpacked, 'link.txt'), 'utf8')).toBe('built\n');
    // The staging directory went with the job.
    expect((await readdir(join(dir, 'work'))).filter((f) => f.endsWith('.staging'))).toEqual([]);
  });

  it('does not pack what a workspace the build replaced with a symlink leads to', async () => {
    const secret = await rootOnly('secret-1', 'secret.txt', 'TOPSECRET\n');
    const { result, log } = await build(
      { 'buildspec.yml': "version: 0.2\nphases:\n  build:\n    commands:\n      - cd .. && mv src src.old && ln -s \"$SECRET_DIR\" src\nartifacts:\n  files: ['secret.txt']\n" },
      { env: { variables: { SECRET_DIR: secret } } },
      { nobody: true },
    );
    expect(result.status).toBe('FAILED');
    expect(result.message).toMatch(/^artifact upload failed: artifacts: the workspace .*src was replaced by a symlink; nothing is read from it$/);
    expect(result.output.artifact).toBeUndefined();
    expect(await log()).not.toContain('stored artifact');
    expect((await stat(join(secret, 'secret.txt'))).uid).toBe(0);
  });
});
