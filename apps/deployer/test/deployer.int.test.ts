import { spawn } from 'node:child_process';
import { chmod, mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Queue } from 'bullmq';
import { Redis } from 'ioredis';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { FsArtifactStore, artifactKey } from '@conveyor/artifacts';
import { cancelChannel, cancelledJobKey, liveDeploymentKey, QUEUES, StageResult, type DeployJob } from '@conveyor/contracts';
import { createQueue, stageLogKey } from '@conveyor/service-kit';
import { completedResults, testRedis, uniquePrefix } from '@conveyor/testing';
import { processStartTime } from '@conveyor/procfs';
import { stopAllDeployments } from '../src/stop-all.js';
import { localDeployJob, type LocalTarget } from '../src/deploy-job.testkit.js';
import { alive, getJson, processesWithEnv, startService, type RunningService } from './service.js';

const TOKEN = 'integration-test-token-0123456789';
const APP = `
import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';
const version = readFileSync('version.txt', 'utf8').trim();
createServer((req, res) => {
  if (req.url === '/healthz') { res.writeHead(200); res.end('ok'); return; }
  res.writeHead(200, { 'content-type': 'application/json' });
  res.end(JSON.stringify({ version, pid: process.pid, runId: process.env.CONVEYOR_RUN_ID, greeting: process.env.GREETING }));
}).listen(Number(process.env.PORT), '127.0.0.1', () => console.log('app ' + version + ' listening'));
`;

let redisUrl: string;
let stopRedis: () => Promise<void>;
let redis: Redis;
let root: string;
let prefix: string;
let service: RunningService;
let deployQueue: Queue;
let store: FsArtifactStore;
let deployDir: string;
/** DEPLOY_UID_CLAIMS_DIR of this test's deployer: its own, not the host's, so tests in parallel keep theirs apart. */
let claimsDir: string;
let runCounter = 0;

beforeAll(async () => {
  ({ url: redisUrl, stop: stopRedis } = await testRedis());
  redis = new Redis(redisUrl, { maxRetriesPerRequest: null });
});
afterAll(async () => {
  await redis.quit();
  await stopRedis();
});

/** The deployer of this test (its Redis prefix, artifacts and DEPLOY_DIR), with `extra` settings. */
const startDeployer = (extra: Record<string, string> = {}) =>
  startService({ REDIS_URL: redisUrl, QUEUE_PREFIX: prefix, ARTIFACT_DIR: store.root, DEPLOY_DIR: deployDir, DEPLOY_UID_CLAIMS_DIR: claimsDir, DEPLOY_STOP_GRACE_SECONDS: '2', CONVEYOR_API_TOKEN: TOKEN, ...extra });

beforeEach(async () => {
  prefix = uniquePrefix('dep');
  root = await mkdtemp(join(tmpdir(), 'cv-deployer-'));
  deployDir = join(root, 'deployments');
  claimsDir = join(root, 'uid-claims');
  store = new FsArtifactStore(join(root, 'artifacts'));
  service = await startDeployer();
  deployQueue = createQueue(QUEUES.deploy, { connection: redis, prefix });
});

afterEach(async () => {
  await service.stop();
  await stopAllDeployments(deployDir, 1000, { claimsDir });
  await deployQueue.obliterate({ force: true });
  await deployQueue.close();
  const keys = await redis.keys(`${prefix}:*`);
  if (keys.length) await redis.del(...keys);
  await rm(root, { recursive: true, force: true });
});

async function makeJob(pipeline: string, version: string, target: LocalTarget = {}, extraFiles: Record<string, string> = {}): Promise<DeployJob> {
  runCounter += 1;
  const runId = `run-${prefix.toLowerCase()}-${runCounter}`;
  const src = join(root, 'src', runId);
  await mkdir(src, { recursive: true });
  await writeFile(join(src, 'server.mjs'), APP);
  await writeFile(join(src, 'version.txt'), version);
  for (const [name, content] of Object.entries(extraFiles)) await writeFile(join(src, name), content);
  const input = await store.putFiles(artifactKey(runId, 'Build', 1), src, ['server.mjs', 'version.txt', ...Object.keys(extraFiles)]);
  return localDeployJob({ runId, runNumber: runCounter, pipeline, input, target: { healthTimeoutSeconds: 20, env: { GREETING: 'hello' }, ...target } });
}

/** Every StageResult the deploy queue's jobs completed with for `jobId`, oldest first. */
async function resultsFor(jobId: string): Promise<StageResult[]> {
  return (await completedResults(redis, prefix, QUEUES.deploy)).filter((r) => r.jobId === jobId);
}

/** Waits for the `nth` StageResult of `jobId` (a re-delivery completes another). */
async function waitResult(jobId: string, nth = 1, ms = 60_000): Promise<StageResult> {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    const found = await resultsFor(jobId);
    if (found.length >= nth) return found[nth - 1]!;
    await new Promise((r) => setTimeout(r, 100));
  }
  const log = await redis.get(stageLogKey(prefix, jobId));
  throw new Error(`no StageResult #${nth} for ${jobId} within ${ms} ms; stage log:\n${log}\nservice output:\n${service.output()}`);
}

/**
 * Nothing of ours answers at `url` any more. Usually the connection is refused; but the port is free
 * again, and a test running alongside may have bound it meanwhile, so any answer but our app's counts.
 */
async function expectNotServing(url: string): Promise<void> {
  const got = await getJson(url);
  if ('error' in got) expect(got.error).toMatch(/ECONNREFUSED|ECONNRESET|socket hang up/);
  else expect(got.body?.runId).toBeUndefined();
}

async function deploy(job: DeployJob, bullJobId = job.jobId, nth = 1): Promise<StageResult> {
  await deployQueue.add('deploy', job, { jobId: bullJobId });
  return waitResult(job.jobId, nth);
}

async function currentRecord(pipeline: string) {
  return JSON.parse(await readFile(join(deployDir, pipeline, 'current.json'), 'utf8'));
}

describe('deployer', () => {
  it('deploys an artifact as a local process and reports a URL that answers', async () => {
    const job = await makeJob('shop', 'v1');
    const result = await deploy(job);
    expect(result.status, result.message).toBe('SUCCEEDED');
    expect(result.output.url).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
    const page = await getJson(result.output.url!);
    expect(page).toMatchObject({ status: 200, body: { version: 'v1', runId: job.runId, greeting: 'hello' } });

    const record = await currentRecord('shop');
    expect(record).toMatchObject({ runId: job.runId, attempt: 1, url: result.output.url, commit: job.commit, pid: (page as any).body.pid });
    expect(record.pgid).toBe(record.pid);

    const log = await redis.get(stageLogKey(prefix, job.jobId));
    expect(log).toContain('app v1 listening');
    expect(log).toContain('now serves shop');

    const denied = await fetch(`${service.url}/api/v1/deployments`);
    expect(denied.status).toBe(401);
    const listed = await fetch(`${service.url}/api/v1/deployments`, { headers: { authorization: `Bearer ${TOKEN}` } });
    expect(await listed.json()).toEqual({ deployments: [expect.objectContaining({ pipeline: 'shop', runId: job.runId, running: true })] });
    // The job metrics every stage service exports.
    const counted = /^conveyor_stage_jobs_total\{type="deploy",status="SUCCEEDED",service="deployer"\} 1$/m;
    let metrics = '';
    for (let i = 0; i < 50 && !counted.test(metrics); i++) {
      if (i) await new Promise((r) => setTimeout(r, 100)); // counted as the worker's completed event fires
      metrics = await (await fetch(`${service.url}/metrics`)).text();
    }
    expect(metrics).toMatch(counted);
  });

  it('replaces the previous version: the new one answers, the old process is gone', async () => {
    const first = await deploy(await makeJob('shop', 'v1'));
    const firstPid = ((await getJson(first.output.url!)) as any).body.pid as number;
    const second = await deploy(await makeJob('shop', 'v2'));
    expect(second.status, second.message).toBe('SUCCEEDED');
    expect(second.output.url).not.toBe(first.output.url);
    expect(await getJson(second.output.url!)).toMatchObject({ status: 200, body: { version: 'v2' } });
    expect(await alive(firstPid)).toBe(false);
    await expectNotServing(first.output.url!);
    expect((await currentRecord('shop')).url).toBe(second.output.url);
    // Said to the monitor stages: which version serves now (one probing the first knows why it stopped).
    expect(JSON.parse((await redis.get(liveDeploymentKey(prefix, 'shop')))!)).toEqual({ runId: second.runId, attempt: 1, url: second.output.url });
  });

  it('fails a version that never becomes healthy, stops it, and keeps the previous one serving', async () => {
    const good = await deploy(await makeJob('shop', 'v1'));
    const broken = await makeJob('shop', 'v2', {
      command: 'echo $$ > pid.txt; echo "booting the broken build"; exec sleep 600',
      healthTimeoutSeconds: 2,
    });
    const result = await deploy(broken);
    expect(result.status).toBe('FAILED');
    expect(result.message).toContain('/healthz did not answer 200 within 2s');
    expect(result.message).toContain('booting the broken build');
    expect(result.message).toContain('the previous version keeps serving');
    const brokenPid = Number(await readFile(join(deployDir, 'shop', `${broken.runId}-1`, 'app', 'pid.txt'), 'utf8'));
    expect(await alive(brokenPid)).toBe(false);
    expect(await getJson(good.output.url!)).toMatchObject({ status: 200, body: { version: 'v1' } });
    expect((await currentRecord('shop')).url).toBe(good.output.url);
  });

  it('fails at once, with its output, when the command exits', async () => {
    const started = Date.now();
    const result = await deploy(await makeJob('api', 'v1', { command: 'echo "cannot start: missing config" >&2; exit 3', healthTimeoutSeconds: 120 }));
    expect(result.status).toBe('FAILED');
    expect(result.message).toContain('exited with code 3');
    expect(result.message).toContain('cannot start: missing config');
    expect(result.message).toContain('no earlier version of this pipeline is serving');
    expect(Date.now() - started).toBeLessThan(20_000);
  });

  it('does not start a second process when the same job is delivered again', async () => {
    const job = await makeJob('shop', 'v1');
    const first = await deploy(job);
    expect(first.status).toBe('SUCCEEDED');
    const pid = ((await getJson(first.output.url!)) as any).body.pid as number;

    // A re-delivery: the same StageJob handed to the deployer again.
    const again = await deploy(job, `${job.jobId}-redelivered`, 2);
    expect(again.status, again.message).toBe('SUCCEEDED');
    expect(again.output.url).toBe(first.output.url);
    expect(await getJson(again.output.url!)).toMatchObject({ status: 200, body: { pid } });
    expect(await processesWithEnv(`CONVEYOR_RUN_ID=${job.runId}`)).toHaveLength(1);
    expect(await redis.get(stageLogKey(prefix, job.jobId))).toContain('nothing started');
  });

  it('a healthy deploy also stops a version left running that current.json does not name', async () => {
    const v1 = await deploy(await makeJob('shop', 'v1'));
    // As after a last attempt that failed once its process was up: running, but not the current one.
    await rm(join(deployDir, 'shop', 'current.json'));
    const v2 = await deploy(await makeJob('shop', 'v2'));
    expect(await getJson(v2.output.url!)).toMatchObject({ status: 200, body: { version: 'v2' } });
    await expectNotServing(v1.output.url!);
  });

  it('a cancelled run never replaces what serves: stopped on notice, or refused at the swap when the notice was missed', async () => {
    const v1 = await deploy(await makeJob('shop', 'v1'));
    expect(v1.status).toBe('SUCCEEDED');
    /** Enqueues a deploy whose command never answers, and resolves once the deploy waits for its health. */
    const waitingForHealth = async (version: string) => {
      const job = await makeJob('shop', version, { command: 'exec sleep 600' });
      await deployQueue.add('deploy', job, { jobId: job.jobId });
      const deadline = Date.now() + 20_000;
      while (!(await redis.get(stageLogKey(prefix, job.jobId)))?.includes('waiting for /healthz')) {
        if (Date.now() > deadline) throw new Error(`the deploy never started; service output:\n${service.output()}`);
        await new Promise((r) => setTimeout(r, 50));
      }
      return job;
    };

    // Marked cancelled, its notice missed (nobody heard it): the check before the swap stops it.
    const marked = await makeJob('shop', 'v2');
    await redis.set(cancelledJobKey(prefix, marked.jobId), '1', 'EX', 60);
    const refused = await deploy(marked);
    expect(refused.status).toBe('FAILED');
    expect(refused.message).toContain('the run was cancelled before this version went live');

    // Told while it waits for health: the new version is stopped at once.
    const told = await waitingForHealth('v3');
    await redis.publish(cancelChannel(prefix), told.jobId);
    expect(await waitResult(told.jobId)).toMatchObject({ status: 'FAILED', message: 'stopped: the run was cancelled' });
    const toldLog = (await redis.get(stageLogKey(prefix, told.jobId)))!;
    expect(toldLog).toContain('deploy stopped: the run was cancelled');
    expect(toldLog).not.toContain('errored');

    expect(await getJson(v1.output.url!)).toMatchObject({ status: 200, body: { version: 'v1' } });
    expect(JSON.parse(await readFile(join(deployDir, 'shop', 'current.json'), 'utf8')).runId).toBe(v1.runId);
    for (const job of [marked, told]) expect(await processesWithEnv(`CONVEYOR_RUN_ID=${job.runId}`)).toEqual([]);
  });

  it('stops, when it starts again, a version a killed deployer left waiting for health whose job is gone', async () => {
    const v1 = await deploy(await makeJob('shop', 'v1'));
    const stuck = await makeJob('shop', 'v2', { command: 'exec sleep 600', healthTimeoutSeconds: 120 });
    await deployQueue.add('deploy', stuck, { jobId: stuck.jobId });
    const deadline = Date.now() + 20_000;
    while (!(await redis.get(stageLogKey(prefix, stuck.jobId)))?.includes('waiting for /healthz')) {
      if (Date.now() > deadline) throw new Error(`the deploy never started; service output:\n${service.output()}`);
      await new Promise((r) => setTimeout(r, 50));
    }
    const record = JSON.parse(await readFile(join(deployDir, 'shop', `${stuck.runId}-1`, '.conveyor-process.json'), 'utf8')) as { pid: number };
    service.process.kill('SIGKILL');
    await new Promise((r) => service.process.once('exit', r));
    // Its job is gone (cancelled and removed, or failed for stalling): no delivery will come back for it.
    await deployQueue.obliterate({ force: true });
    expect(await alive(record.pid)).toBe(true);
    service = await startDeployer();
    await expect.poll(() => alive(record.pid), { timeout: 20_000, interval: 100 }).toBe(false);
    await expect.poll(() => service.output(), { timeout: 10_000, interval: 100 }).toContain('stopped a version left running by a deploy that never finished');
    expect(await getJson(v1.output.url!)).toMatchObject({ status: 200, body: { version: 'v1' } });
  });

  it('leaves deployments running when it stops; stopAllDeployments stops them', async () => {
    const result = await deploy(await makeJob('shop', 'v1'));
    expect(await service.stop()).toBe(0);
    expect(await getJson(result.output.url!)).toMatchObject({ status: 200, body: { version: 'v1' } });
    const stopped = await stopAllDeployments(deployDir, 2000, { claimsDir });
    expect(stopped).toEqual([expect.objectContaining({ pipeline: 'shop', result: 'terminated' })]);
    await expectNotServing(result.output.url!);
  });
  it('never trusts a process record that comes inside the artifact', async () => {
    // A bystander process group the forged record points at.
    const bystander = spawn('sleep', ['600'], { detached: true, stdio: 'ignore' });
    bystander.unref();
    try {
      // With the bystander's real start time: a record the deployer would act on, were it read from there.
      const procStart = processStartTime(bystander.pid!);
      expect(procStart).toBeTruthy();
      const forged = JSON.stringify({ pipeline: 'shop', runId: 'run-forged-0001', attempt: 1, pid: bystander.pid, pgid: bystander.pid, procStart, port: 1, url: 'http://127.0.0.1:1', commit: 'x', startedAt: new Date().toISOString() });
      const job = await makeJob('shop', 'v-forged', {}, { '.conveyor-process.json': forged, 'current.json': forged });
      await deployQueue.add('deploy', job, { jobId: job.jobId });
      expect((await waitResult(job.jobId)).status).toBe('SUCCEEDED');
      await stopAllDeployments(deployDir, 1000, { claimsDir });
      expect(await alive(bystander.pid!)).toBe(true);
    } finally {
      process.kill(-bystander.pid!, 'SIGKILL');
    }
  });
});

// Reports who it runs as, and whether it can read its parent's (the deployer's) environment.
const WHO = `
import { readFileSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
let parentEnv = 'readable';
try { readFileSync('/proc/' + process.ppid + '/environ'); } catch (err) { parentEnv = err.code; }
let peek = 'nothing';
if (process.env.PEEK) { try { readFileSync(process.env.PEEK); peek = 'readable'; } catch (err) { peek = err.code; } }
writeFileSync(process.env.HOME + '/written', 'ok');
createServer((req, res) => {
  if (req.url === '/healthz') { res.writeHead(200); res.end('ok'); return; }
  res.writeHead(200, { 'content-type': 'application/json' });
  res.end(JSON.stringify({ uid: process.getuid(), gid: process.getgid(), groups: process.getgroups(), home: process.env.HOME, parentEnv, peek, cwd: process.cwd() }));
}).listen(Number(process.env.PORT), '127.0.0.1');
`;

describe.skipIf(process.getuid?.() !== 0)('deployer as root', () => {
  const FIRST = 2_000_008_000;
  /** The user ids claimed for versions (files named by id in the claims directory, each naming this DEPLOY_DIR). */
  const claimed = async () => {
    const ids = (await readdir(claimsDir)).filter((n) => /^\d+$/.test(n));
    for (const id of ids) expect(JSON.parse(await readFile(join(claimsDir, id), 'utf8'))).toMatchObject({ deployDir });
    return ids;
  };
  beforeEach(async () => {
    // Its versions' users must reach DEPLOY_DIR: a 0700 temporary directory would make it fall back.
    await service.stop();
    await chmod(root, 0o755);
    service = await startDeployer({ DEPLOY_KEEP_VERSIONS: '1', DEPLOY_UIDS: `${FIRST}-${FIRST + 99}` });
  });

  it('runs each version as a user of its own, which cannot read the deployer; what a version leaves running goes with it', async () => {
    // A daemon that leaves the version's process group (setsid): only its user id still ties it to the version.
    const command = 'setsid sleep 600 </dev/null >/dev/null 2>&1 & echo $! > daemon.pid; exec node who.mjs';
    const v1 = await deploy(await makeJob('shop', 'v1', { command }, { 'who.mjs': WHO }));
    expect(v1.status, v1.message).toBe('SUCCEEDED');
    const first = (await getJson(v1.output.url!)) as { body: { uid: number; gid: number; groups: number[]; home: string; parentEnv: string; cwd: string } };
    expect(first.body.uid).toBeGreaterThanOrEqual(FIRST);
    expect(first.body.uid).toBeLessThanOrEqual(FIRST + 99);
    expect(first.body.gid).toBe(first.body.uid);
    expect(first.body.groups.filter((g) => g !== first.body.gid)).toEqual([]);
    expect(first.body.parentEnv).toBe('EACCES');
    expect(first.body.home).toBe(join(deployDir, 'shop', `${v1.runId}-1`, 'home'));
    expect(await readFile(join(first.body.home, 'written'), 'utf8')).toBe('ok');
    expect((await stat(join(first.body.cwd, 'who.mjs'))).uid).toBe(first.body.uid);
    const daemon = Number(await readFile(join(first.body.cwd, 'daemon.pid'), 'utf8'));
    expect(await alive(daemon)).toBe(true);
    expect(await claimed()).toEqual([String(first.body.uid)]);

    // Another pipeline's version, as its own user, cannot read this one's files.
    const nosy = await deploy(await makeJob('nosy', 'v1', { command: 'exec node who.mjs', env: { PEEK: join(first.body.cwd, 'who.mjs') } }, { 'who.mjs': WHO }));
    expect(nosy.status, nosy.message).toBe('SUCCEEDED');
    expect(((await getJson(nosy.output.url!)) as { body: { peek: string; uid: number } }).body).toMatchObject({ peek: 'EACCES' });
    expect(await claimed()).toHaveLength(2);

    const v2 = await deploy(await makeJob('shop', 'v2', { command }, { 'who.mjs': WHO }));
    expect(v2.status, v2.message).toBe('SUCCEEDED');
    const second = (await getJson(v2.output.url!)) as { body: { uid: number; cwd: string } };
    expect(second.body.uid).not.toBe(first.body.uid);
    await expectNotServing(v1.output.url!);
    expect(await alive(daemon)).toBe(false); // stopped with its version, though it left the group
    // v1 was pruned (one version kept): its id is free again.
    expect(await claimed()).not.toContain(String(first.body.uid));
    expect(await claimed()).toContain(String(second.body.uid));

    // The launcher's shutdown stops the serving version's daemon too.
    const daemon2 = Number(await readFile(join(second.body.cwd, 'daemon.pid'), 'utf8'));
    expect(await alive(daemon2)).toBe(true);
    await stopAllDeployments(deployDir, 1000, { claimsDir });
    expect(await alive(daemon2)).toBe(false);
  });

  it("takes the answer of a server its version started outside its process group, as the version's own user, for the version's", async () => {
    // The server leaves the group (setsid) while the group's leader stays: the listening socket is held by
    // no process of the group, but by the user the version has to itself.
    const command = 'setsid node who.mjs </dev/null & exec sleep 600';
    const v1 = await deploy(await makeJob('detached', 'v1', { command }, { 'who.mjs': WHO }));
    expect(v1.status, v1.message).toBe('SUCCEEDED');
    const body = ((await getJson(v1.output.url!)) as { body: { uid: number } }).body;
    expect(body.uid).toBeGreaterThanOrEqual(FIRST);
  });
});
