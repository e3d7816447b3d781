import { execFile } from 'node:child_process';
import { createHash, createHmac, randomUUID } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { Queue, UnrecoverableError, Worker } from 'bullmq';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Redis } from 'ioredis';
import { cancelledJobKey, PipelineDefinition, QUEUES, type RunView, type StageJob } from '@conveyor/contracts';
import { createLogger, createQueue } from '@conveyor/service-kit';
import { commitFiles, git, initRepo, recordCancelNotices, testRedis, uniquePrefix } from '@conveyor/testing';
import { TRIGGER_GLOB_LIMITS } from '../src/domain/triggers.js';
import { loadEnv } from '../src/env.js';
import { composeService } from '../src/service.js';
import { BullJobDispatcher } from '../src/adapters/bull-job-dispatcher.js';
import { RedisRunStore } from '../src/adapters/redis-run-store.js';
import { Orchestrator } from '../src/orchestrator.js';

const TOKEN = 'test-token-0123456789abcdef';
const SECRET = 'webhook-secret-0123456789';
const exec = promisify(execFile);
const auth = { authorization: `Bearer ${TOKEN}` };

let dir: string;
let repoDir: string;
let firstCommit: string;
let redisUrl: string;
let prefix: string;
let service: ReturnType<typeof composeService>;
let redis: Redis;

const sign = (body: string, secret = SECRET) => `sha256=${createHmac('sha256', secret).update(body).digest('hex')}`;

function pushBody(commit: string, branch = 'main', repo = `file://${repoDir}`) {
  return JSON.stringify({ ref: `refs/heads/${branch}`, before: '0'.repeat(40), after: commit, repository: { clone_url: repo }, sender: { login: 'octo' } });
}

async function sendPush(body: string, delivery: string, signature = sign(body), event = 'push', url = '/webhooks/github') {
  return service.app.inject({
    method: 'POST',
    url,
    headers: { 'content-type': 'application/json', 'x-github-event': event, 'x-github-delivery': delivery, 'x-hub-signature-256': signature },
    payload: body,
  });
}

async function getRun(runId: string): Promise<RunView> {
  const res = await service.app.inject({ method: 'GET', url: `/api/v1/runs/${runId}`, headers: auth });
  expect(res.statusCode).toBe(200);
  return res.json();
}

async function waitFor<T>(fn: () => Promise<T | undefined>, what: string, ms = 20_000): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

async function runCount(): Promise<number> {
  const res = await service.app.inject({ method: 'GET', url: '/api/v1/pipelines/hello/runs', headers: auth });
  return res.json().runs.length;
}

const logLines: string[] = [];

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'cv-sw-'));
  repoDir = await initRepo(join(dir, 'repo'));
  firstCommit = await commitFiles(repoDir, { 'README.md': 'hello\n', 'buildspec.yml': 'version: 0.2\nphases:\n  build:\n    commands:\n      - echo hi\n' });
  redisUrl = (await testRedis()).url;
  prefix = uniquePrefix('sw');
  const env = loadEnv({
    REDIS_URL: redisUrl,
    QUEUE_PREFIX: prefix,
    CONVEYOR_API_TOKEN: TOKEN,
    ARTIFACT_DIR: join(dir, 'artifacts'),
    SOURCE_CACHE_DIR: join(dir, 'cache'),
    RECONCILE_INTERVAL_MS: '3600000',
    LOG_LEVEL: 'silent',
  });
  // Warnings and errors kept: what the service logs is checked for secrets.
  service = composeService(env, createLogger('test', 'warn', { write: (line: string) => void logLines.push(line) }));
  await service.app.ready();
  await service.start();
  redis = new Redis(redisUrl);
});

afterAll(async () => {
  for (const step of service.shutdown) await step.run();
  redis.disconnect();
  await rm(dir, { recursive: true, force: true });
  await (await testRedis()).stop();
});

describe('pipelines API', () => {
  it('refuses requests without the API token', async () => {
    const res = await service.app.inject({ method: 'GET', url: '/api/v1/pipelines' });
    expect(res.statusCode).toBe(401);
    expect(res.headers['content-type']).toContain('application/problem+json');
    const wrong = await service.app.inject({ method: 'GET', url: '/api/v1/pipelines', headers: { authorization: 'Bearer nope' } });
    expect(wrong.statusCode).toBe(401);
    expect(wrong.json().errors).toEqual([{ path: 'headers.authorization', message: 'a Bearer token of this service is required' }]);
  });

  it('names the bad fields of an invalid definition', async () => {
    const res = await service.app.inject({
      method: 'POST',
      url: '/api/v1/pipelines',
      headers: auth,
      payload: { name: 'Bad Name', source: { provider: 'github', repository: 'https://u:p@example.com/r.git' }, stages: [{ name: 'Build', type: 'bake' }] },
    });
    expect(res.statusCode).toBe(400);
    const paths = res.json().errors.map((e: { path: string }) => e.path);
    expect(paths).toEqual(expect.arrayContaining(['name', 'source.repository', 'stages.0.type']));
  });

  it('creates from YAML (201), replaces (200) and never returns the secret', async () => {
    const yaml = `name: hello
source:
  provider: github
  repository: file://${repoDir}
  branch: main
  webhookSecret: "${SECRET}"
stages:
  - { name: Build, type: build }
`;
    const created = await service.app.inject({ method: 'POST', url: '/api/v1/pipelines', headers: { ...auth, 'content-type': 'application/yaml' }, payload: yaml });
    expect(created.statusCode).toBe(201);
    expect(created.body).not.toContain(SECRET);
    expect(created.json().source.hasWebhookSecret).toBe(true);
    const replaced = await service.app.inject({ method: 'POST', url: '/api/v1/pipelines', headers: { ...auth, 'content-type': 'application/yaml' }, payload: yaml });
    expect(replaced.statusCode).toBe(200);
    const got = await service.app.inject({ method: 'GET', url: '/api/v1/pipelines/hello', headers: auth });
    expect(got.json().name).toBe('hello');
    expect(got.body).not.toContain(SECRET);
    // GET, edit, POST: the view's read-only field goes back with it, and the stored secret is kept.
    const edited = { ...got.json(), stages: [...got.json().stages, { name: 'Test', type: 'test' }] };
    const roundTrip = await service.app.inject({ method: 'POST', url: '/api/v1/pipelines', headers: auth, payload: edited });
    expect(roundTrip.statusCode, roundTrip.body).toBe(200);
    expect(roundTrip.json()).toMatchObject({ source: { hasWebhookSecret: true }, stages: [{ name: 'Build' }, { name: 'Test' }] });
    await service.app.inject({ method: 'POST', url: '/api/v1/pipelines', headers: { ...auth, 'content-type': 'application/yaml' }, payload: yaml });
    const bad = await service.app.inject({ method: 'POST', url: '/api/v1/pipelines', headers: { ...auth, 'content-type': 'application/yaml' }, payload: 'a: [' });
    expect(bad.statusCode).toBe(400);
    const text = await service.app.inject({ method: 'POST', url: '/api/v1/pipelines', headers: { ...auth, 'content-type': 'application/xml' }, payload: '<name/>' });
    expect(text.statusCode).toBe(415);
    expect(text.json()).toMatchObject({ status: 415, title: 'Unsupported Media Type', detail: expect.stringContaining('send application/json or application/yaml'), errors: [{ path: 'headers.content-type', message: 'not a type this route takes' }] });
    // Plain text too (fastify takes it by default): a definition sent as text is the wrong type, not a malformed body.
    const plain = await service.app.inject({ method: 'POST', url: '/api/v1/pipelines', headers: { ...auth, 'content-type': 'text/plain' }, payload: yaml });
    expect(plain.statusCode).toBe(415);
    expect(plain.json().errors).toEqual([{ path: 'headers.content-type', message: 'not a type this route takes' }]);
    // A path that exists with other methods: 405 naming them.
    const wrongMethod = await service.app.inject({ method: 'PUT', url: '/api/v1/pipelines/hello', headers: auth, payload: {} });
    expect(wrongMethod.statusCode).toBe(405);
    expect(wrongMethod.headers.allow).toBe('DELETE, GET, HEAD');
    expect(wrongMethod.json()).toMatchObject({ status: 405, title: 'Method Not Allowed' });
    expect((await service.app.inject({ method: 'GET', url: '/api/v1/nothing-here', headers: auth })).statusCode).toBe(404);
    const notAnObject = await service.app.inject({ method: 'POST', url: '/api/v1/pipelines', headers: { ...auth, 'content-type': 'application/json' }, payload: '"just a string"' });
    expect(notAnObject.statusCode).toBe(400);
    expect((await service.app.inject({ method: 'GET', url: '/api/v1/pipelines/nope', headers: auth })).statusCode).toBe(404);
  });
});

describe('a write Redis refuses', () => {
  // It makes Redis refuse writes for a moment: only on this file's private redis-server, never on a REDIS_URL others use.
  it.skipIf(Boolean(process.env.REDIS_URL))('is a 503 saying so, and the definition (its secret) reaches no log line', async () => {
    const secret = 'never-logged-secret-0123456789';
    const payload = { name: 'refused', source: { provider: 'github', repository: `file://${repoDir}`, webhookSecret: secret }, stages: [{ name: 'Build', type: 'build' }] };
    const from = logLines.length;
    // Out of memory (noeviction): Redis refuses every write, and ioredis's error carries the commands' arguments.
    await redis.config('SET', 'maxmemory', '1');
    try {
      const res = await service.app.inject({ method: 'POST', url: '/api/v1/pipelines', headers: auth, payload });
      expect(res.statusCode, res.body).toBe(503);
      expect(res.json().detail).toMatch(/^storage refuses the request now \((OOM|EXECABORT)\); retry later$/);
    } finally {
      await redis.config('SET', 'maxmemory', '0');
    }
    const logged = logLines.slice(from).join('');
    expect(logged).toMatch(/OOM command not allowed/);
    expect(logged).not.toContain(secret);
  });
});

describe('YAML definitions', () => {
  const post = (yaml: string) => service.app.inject({ method: 'POST', url: '/api/v1/pipelines', headers: { ...auth, 'content-type': 'application/yaml' }, payload: yaml });
  const head = `name: yaml-checks
source:
  provider: github
  repository: file:///nowhere.git
`;
  it('refuses an unknown tag, naming where, never quoting the line (it may hold the secret)', async () => {
    const res = await post(`${head}  webhookSecret: !vault tagged-secret-0123456789\nstages: [{ name: Build, type: build }]\n`);
    expect(res.statusCode).toBe(400);
    expect(res.json().detail).toBe('body is not a valid YAML definition: Unresolved tag: !vault at line 5, column 18');
    expect(res.body).not.toContain('tagged-secret');
    expect((await service.app.inject({ method: 'GET', url: '/api/v1/pipelines/yaml-checks', headers: auth })).statusCode).toBe(404);
  });

  it('refuses keys that could reach a prototype, as in JSON', async () => {
    const res = await post(`${head}stages:\n  - name: Build\n    type: build\n    env: { variables: { __proto__: x, A: b } }\n`);
    expect(res.statusCode).toBe(400);
    expect(res.json().errors).toEqual([{ path: 'body.stages.0.env.variables.__proto__', message: 'key __proto__ is not allowed' }]);
  });

  it('refuses a definition its aliases expand past 1 MiB', async () => {
    const variables = Array.from({ length: 600 }, (_, i) => `    V${i}: "${'x'.repeat(300)}"`).join('\n');
    const stages = Array.from({ length: 49 }, (_, i) => `  - { name: S${i}, type: build, env: *env }`).join('\n');
    const res = await post(`${head}envs:\n  e: &env\n   variables:\n${variables.replaceAll('    V', '     V')}\nstages:\n${stages}\n`);
    expect(res.statusCode, res.body).toBe(400);
    expect(res.json().detail).toMatch(/^body expands through its aliases to \d+ bytes of definition, more than 1048576$/);
  });
});

describe('removing a pipeline', () => {
  it('DELETE removes the definition (204; then 404) and leaves its runs readable', async () => {
    const yaml = `name: doomed\nsource:\n  provider: generic\n  repository: file://${repoDir}\nstages:\n  - { name: Build, type: build }\n`;
    expect((await service.app.inject({ method: 'POST', url: '/api/v1/pipelines', headers: { ...auth, 'content-type': 'application/yaml' }, payload: yaml })).statusCode).toBe(201);
    const { runId } = (await service.app.inject({ method: 'POST', url: '/api/v1/pipelines/doomed/runs', headers: auth, payload: {} })).json();
    const removed = await service.app.inject({ method: 'DELETE', url: '/api/v1/pipelines/doomed', headers: auth });
    expect(removed.statusCode).toBe(204);
    expect((await service.app.inject({ method: 'GET', url: '/api/v1/pipelines/doomed', headers: auth })).statusCode).toBe(404);
    expect((await service.app.inject({ method: 'DELETE', url: '/api/v1/pipelines/doomed', headers: auth })).statusCode).toBe(404);
    expect((await service.app.inject({ method: 'DELETE', url: '/api/v1/pipelines/doomed' })).statusCode).toBe(401);
    expect((await getRun(runId)).pipeline).toBe('doomed');
    const names = (await service.app.inject({ method: 'GET', url: '/api/v1/pipelines', headers: auth })).json().pipelines.map((p: { name: string }) => p.name);
    expect(names).not.toContain('doomed');
  });
});

describe('a definition stored under an older schema', () => {
  it('is left out of the list (which still answers) and its GET says what is wrong', async () => {
    const legacy = { name: 'legacy', source: { provider: 'generic', repository: `file://${repoDir}`, branch: 'release 1' }, stages: [{ name: 'Build', type: 'build' }] };
    await redis.multi().set(`${prefix}:pipeline:legacy`, JSON.stringify(legacy)).sadd(`${prefix}:pipelines`, 'legacy').exec();
    try {
      const list = await service.app.inject({ method: 'GET', url: '/api/v1/pipelines', headers: auth });
      expect(list.statusCode).toBe(200);
      expect(list.json().pipelines.map((p: { name: string }) => p.name)).not.toContain('legacy');
      const one = await service.app.inject({ method: 'GET', url: '/api/v1/pipelines/legacy', headers: auth });
      expect(one.statusCode).toBe(409);
      expect(one.json().detail).toContain('source.branch');
      // An unsigned webhook for it learns nothing (401, as for a pipeline that does not exist).
      const hook = await sendPush(pushBody(firstCommit), 'delivery-legacy', 'sha256=00', 'push', '/webhooks/github/legacy');
      expect(hook.statusCode).toBe(401);
      expect(hook.body).not.toContain('source.branch');
      // POSTed again, corrected, it is back.
      const fixed = await service.app.inject({ method: 'POST', url: '/api/v1/pipelines', headers: auth, payload: { ...legacy, source: { ...legacy.source, branch: 'release-1' } } });
      expect(fixed.statusCode).toBe(200);
      expect((await service.app.inject({ method: 'GET', url: '/api/v1/pipelines/legacy', headers: auth })).statusCode).toBe(200);
    } finally {
      await redis.multi().del(`${prefix}:pipeline:legacy`).srem(`${prefix}:pipelines`, 'legacy').exec();
    }
  });
});

describe('runs', () => {
  it('a manual run snapshots the commit and enqueues the build job with the source artifact', async () => {
    const res = await service.app.inject({ method: 'POST', url: '/api/v1/pipelines/hello/runs', headers: auth, payload: {} });
    expect(res.statusCode).toBe(202);
    const { runId } = res.json();
    const run = await waitFor(async () => {
      const r = await getRun(runId);
      return r.stages[1]!.status === 'RUNNING' ? r : undefined;
    }, 'build stage to start');
    expect(run.commit).toBe(firstCommit);
    expect(run.stages[0]).toMatchObject({ name: 'Source', status: 'SUCCEEDED', result: { commit: firstCommit } });
    const build = new Queue(QUEUES.build, { connection: redis, prefix });
    const job = await build.getJob(`${runId}.Build.1`);
    expect(job?.data).toMatchObject({ type: 'build', commit: firstCommit, input: run.stages[0]!.result!.artifact });
    await build.close();
    const logs = await service.app.inject({ method: 'GET', url: `/api/v1/runs/${runId}/stages/Source/logs`, headers: auth });
    expect(logs.headers['content-type']).toContain('text/plain');
    expect(logs.body).toContain(`resolved refs/heads/main to ${firstCommit}`);
  });

  it('a run for a ref that does not exist fails at Source with the reason', async () => {
    const res = await service.app.inject({ method: 'POST', url: '/api/v1/pipelines/hello/runs', headers: auth, payload: { ref: 'no-such-branch' } });
    const run = await waitFor(async () => {
      const r = await getRun(res.json().runId);
      return r.status === 'FAILED' ? r : undefined;
    }, 'run to fail');
    expect(run.stages.map((s) => s.status)).toEqual(['FAILED', 'SKIPPED']);
    expect(run.stages[0]!.message).toContain('refs/heads/no-such-branch not found');
  });

  it("a manual run's commit must be its ref's: another branch's commit fails at Source, saying so; with that branch it runs", async () => {
    await git(repoDir, 'checkout', '-q', '-b', 'side');
    const sideCommit = await commitFiles(repoDir, { 'side.txt': 'side\n' });
    await git(repoDir, 'checkout', '-q', 'main');
    const settled = async (payload: object) => {
      const res = await service.app.inject({ method: 'POST', url: '/api/v1/pipelines/hello/runs', headers: auth, payload });
      expect(res.statusCode).toBe(202);
      return waitFor(async () => {
        const r = await getRun(res.json().runId);
        return r.stages[0]!.status !== 'RUNNING' && r.stages[0]!.status !== 'PENDING' ? r : undefined;
      }, 'Source to finish');
    };
    const wrong = await settled({ ref: 'main', commit: sideCommit });
    expect(wrong.stages[0]).toMatchObject({ status: 'FAILED', message: expect.stringContaining(`commit ${sideCommit} is not on refs/heads/main`) });
    const right = await settled({ ref: 'side', commit: sideCommit });
    expect(right.stages[0]).toMatchObject({ status: 'SUCCEEDED', result: { commit: sideCommit } });
    const logs = await service.app.inject({ method: 'GET', url: `/api/v1/runs/${right.id}/stages/Source/logs`, headers: auth });
    expect(logs.body).toContain(`commit ${sideCommit} (given for refs/heads/side, which holds it)`);
  });

  it('fetches past a lock file a killed git left in the mirror', async () => {
    const first = await service.app.inject({ method: 'POST', url: '/api/v1/pipelines/hello/runs', headers: auth, payload: {} });
    await waitFor(async () => ((await getRun(first.json().runId)).stages[0]!.status === 'SUCCEEDED' ? true : undefined), 'the mirror to exist');
    const mirror = join(dir, 'cache', `${createHash('sha256').update(`file://${repoDir}`).digest('hex').slice(0, 24)}.git`);
    await writeFile(join(mirror, 'refs', 'heads', 'main.lock'), '');
    await writeFile(join(mirror, 'packed-refs.lock'), '');
    const next = await commitFiles(repoDir, { 'later.txt': 'later\n' });
    const res = await service.app.inject({ method: 'POST', url: '/api/v1/pipelines/hello/runs', headers: auth, payload: {} });
    const run = await waitFor(async () => {
      const r = await getRun(res.json().runId);
      return r.stages[0]!.status === 'RUNNING' ? undefined : r;
    }, 'Source to finish');
    expect(run.stages[0], JSON.stringify(run.stages[0])).toMatchObject({ status: 'SUCCEEDED', result: { commit: next } });
  });

  it('rejects a malformed run request', async () => {
    const res = await service.app.inject({ method: 'POST', url: '/api/v1/pipelines/hello/runs', headers: auth, payload: { commit: 'xyz' } });
    expect(res.statusCode).toBe(400);
    expect(res.json().errors[0].path).toBe('body.commit');
    const cursor = await service.app.inject({ method: 'GET', url: '/api/v1/pipelines/hello/runs?before=garbage', headers: auth });
    expect(cursor.statusCode).toBe(400);
    expect(cursor.json().errors[0].path).toBe('querystring.before');
    const first = (await service.app.inject({ method: 'GET', url: '/api/v1/pipelines/hello/runs?limit=1', headers: auth })).json();
    expect(first.runs).toHaveLength(1);
    const second = (await service.app.inject({ method: 'GET', url: `/api/v1/pipelines/hello/runs?limit=1&before=${first.next}`, headers: auth })).json();
    expect(second.runs[0].id).not.toBe(first.runs[0].id);
    // No body, or an empty one sent as JSON (what `curl -X POST -H 'content-type: application/json'` sends), is a run of the default branch.
    const empty = await service.app.inject({ method: 'POST', url: '/api/v1/pipelines/hello/runs', headers: { ...auth, 'content-type': 'application/json' }, payload: '' });
    expect(empty.statusCode).toBe(202);
    expect((await getRun(empty.json().runId)).trigger.ref).toBe('refs/heads/main');
    const emptyDefinition = await service.app.inject({ method: 'POST', url: '/api/v1/pipelines', headers: { ...auth, 'content-type': 'application/json' }, payload: '' });
    expect(emptyDefinition.statusCode).toBe(400);
    expect(emptyDefinition.headers['content-type']).toContain('application/problem+json');
    const poisoned = await service.app.inject({ method: 'POST', url: '/api/v1/pipelines', headers: { ...auth, 'content-type': 'application/json' }, payload: '{"name":"p","__proto__":{"admin":true}}' });
    expect(poisoned.statusCode).toBe(400);
    expect(poisoned.json().errors[0]).toMatchObject({ path: 'body.__proto__', message: 'key __proto__ is not allowed' });
    const ref = await service.app.inject({ method: 'POST', url: '/api/v1/pipelines/hello/runs', headers: auth, payload: { ref: '--upload-pack=touch /tmp/x' } });
    expect(ref.statusCode).toBe(400);
    expect(ref.json().errors[0]).toMatchObject({ path: 'body.ref', message: expect.stringContaining('git ref name') });
  });
});

describe('cancel', () => {
  const cancel = (runId: string, payload: unknown = {}, headers: Record<string, string> = auth) =>
    service.app.inject({ method: 'POST', url: `/api/v1/runs/${runId}/cancel`, headers, payload: payload as object });

  it('ends a run whose build waits: the stage CANCELLED, its job dropped, marked and announced; again is 202 and changes nothing', async () => {
    const cancels = await recordCancelNotices(redisUrl, prefix);
    try {
      const { runId } = (await service.app.inject({ method: 'POST', url: '/api/v1/pipelines/hello/runs', headers: auth, payload: {} })).json();
      await waitFor(async () => ((await getRun(runId)).stages[1]!.status === 'RUNNING' ? true : undefined), 'build stage to start');
      const jobId = `${runId}.Build.1`;
      const build = new Queue(QUEUES.build, { connection: redis, prefix });
      expect(await build.getJob(jobId)).toBeDefined();

      const res = await cancel(runId, { reason: 'wrong commit' });
      expect(res.statusCode).toBe(202);
      expect(res.json()).toMatchObject({ id: runId, status: 'CANCELLED', message: 'wrong commit' });
      const run = await getRun(runId);
      expect(run.status).toBe('CANCELLED');
      expect(run.finishedAt).toBeTruthy();
      expect(run.stages.map((s) => s.status)).toEqual(['SUCCEEDED', 'CANCELLED']);
      expect(await build.getJob(jobId)).toBeUndefined();
      expect(await redis.exists(cancelledJobKey(prefix, jobId))).toBe(1);
      expect(await cancels.settled()).toContain(jobId); // and again 1 s and 10 s later
      await build.close();

      // Idempotent: the run stays as it is (that the notices go out again is shown in run-store.int.test.ts).
      const again = await cancel(runId);
      expect(again.statusCode).toBe(202);
      expect(again.json()).toMatchObject({ status: 'CANCELLED', message: 'wrong commit' });
    } finally {
      cancels.close();
    }
  });

  it('with mode wait, answers 202 with the run still RUNNING and its stop requested, leaving the build job queued', async () => {
    const { runId } = (await service.app.inject({ method: 'POST', url: '/api/v1/pipelines/hello/runs', headers: auth, payload: {} })).json();
    await waitFor(async () => ((await getRun(runId)).stages[1]!.status === 'RUNNING' ? true : undefined), 'build stage to start');
    const res = await cancel(runId, { reason: 'after this build', mode: 'wait' });
    expect(res.statusCode).toBe(202);
    expect(res.json()).toMatchObject({ status: 'RUNNING', stopRequested: { reason: 'after this build' } });
    expect(res.json().stages.map((s: { status: string }) => s.status)).toEqual(['SUCCEEDED', 'RUNNING']);
    const build = new Queue(QUEUES.build, { connection: redis, prefix });
    expect(await build.getJob(`${runId}.Build.1`)).toBeDefined();
    await build.close();
  });

  it('refuses to cancel a run that ended (409), an unknown run (404), a bad reason (400), and without the token (401)', async () => {
    const { runId } = (await service.app.inject({ method: 'POST', url: '/api/v1/pipelines/hello/runs', headers: auth, payload: { ref: 'no-such-branch' } })).json();
    await waitFor(async () => ((await getRun(runId)).status === 'FAILED' ? true : undefined), 'run to fail');
    const ended = await cancel(runId);
    expect(ended.statusCode).toBe(409);
    expect(ended.headers['content-type']).toContain('application/problem+json');
    expect(ended.json().detail).toContain('already ended FAILED');
    expect((await getRun(runId)).status).toBe('FAILED');

    expect((await cancel('run-that-does-not-exist')).statusCode).toBe(404);
    const badMode = await cancel(runId, { mode: 'later' });
    expect(badMode.statusCode).toBe(400);
    expect(badMode.json().errors[0].path).toBe('body.mode');
    const bad = await cancel(runId, { reason: 5 });
    expect(bad.statusCode).toBe(400);
    expect(bad.json().errors[0].path).toBe('body.reason');
    expect((await cancel(runId, {}, {})).statusCode).toBe(401);
  });
});

describe('GitHub webhooks', () => {
  it('a signed push creates one run; the same delivery again creates none', async () => {
    const before = await runCount();
    const body = pushBody(firstCommit);
    const first = await sendPush(body, 'delivery-1');
    expect(first.statusCode).toBe(202);
    const again = await sendPush(body, 'delivery-1');
    expect(again.statusCode).toBe(200);
    expect(again.json()).toMatchObject({ duplicate: true, runId: first.json().runId });
    // The delivery id is not signed: the same signed body under new ids (a captured delivery replayed)
    // is the same delivery, not a new push to build and deploy again.
    const replays = await Promise.all(['replay-1', 'replay-2', 'replay-3'].map((id) => sendPush(body, id)));
    expect(replays.map((r) => r.statusCode)).toEqual([200, 200, 200]);
    for (const r of replays) expect(r.json()).toMatchObject({ duplicate: true, runId: first.json().runId });
    expect(await runCount()).toBe(before + 1);
    const run = await getRun(first.json().runId);
    expect(run.trigger).toMatchObject({ type: 'webhook', deliveryId: 'delivery-1', commit: firstCommit, ref: 'refs/heads/main', actor: 'octo' });
    // The duplicates spent no run number: the next run of the pipeline is numbered right after.
    const nextBody = JSON.stringify({ ...JSON.parse(body), before: '1'.repeat(40) });
    const next = await sendPush(nextBody, 'delivery-1-next');
    expect(next.statusCode).toBe(202);
    expect((await getRun(next.json().runId)).number).toBe(run.number + 1);
  });

  it("takes GitHub's default form-encoded deliveries (the JSON in payload, the signature over the form)", async () => {
    const before = await runCount();
    const form = new URLSearchParams({ payload: pushBody(firstCommit) }).toString();
    const post = (body: string, delivery: string, signature = sign(body)) =>
      service.app.inject({
        method: 'POST',
        url: '/webhooks/github',
        headers: { 'content-type': 'application/x-www-form-urlencoded', 'x-github-event': 'push', 'x-github-delivery': delivery, 'x-hub-signature-256': signature },
        payload: body,
      });
    const res = await post(form, 'delivery-form-1');
    expect(res.statusCode, res.body).toBe(202);
    expect((await getRun(res.json().runId)).trigger).toMatchObject({ deliveryId: 'delivery-form-1', commit: firstCommit });
    // Signed over the JSON instead of the form bytes: refused.
    expect((await post(form, 'delivery-form-2', sign(pushBody(firstCommit)))).statusCode).toBe(401);
    const empty = await post('other=1', 'delivery-form-3');
    expect(empty.statusCode).toBe(400);
    expect(empty.json().errors[0].path).toBe('body.payload');
    expect(await runCount()).toBe(before + 1);
  });

  it('refuses a bad or missing signature with 401 and creates no run', async () => {
    const before = await runCount();
    const body = pushBody(firstCommit);
    const forged = await sendPush(body, 'delivery-2', sign(body, 'another-secret-0123456'));
    expect(forged.statusCode).toBe(401);
    expect(forged.json().errors).toEqual([{ path: 'headers.x-hub-signature-256', message: 'matches no pipeline secret' }]);
    const unsigned = await sendPush(body, 'delivery-3', '');
    expect(unsigned.statusCode).toBe(401);
    expect(unsigned.json().errors).toEqual([{ path: 'headers.x-hub-signature-256', message: 'required' }]);
    expect((await sendPush(body + ' ', 'delivery-4', sign(body))).statusCode).toBe(401);
    expect(await runCount()).toBe(before);
  });

  it('answers ping, skips filtered branches with a reason, 404s unknown repositories, 400s bad payloads', async () => {
    const ping = await sendPush('{"zen":"hi"}', 'delivery-5', sign('{"zen":"hi"}'), 'ping');
    expect(ping.statusCode).toBe(200);
    // Every accepted delivery leaves one recorded decision.
    const digest = (body: string) => createHash('sha256').update(body).digest('hex');
    expect(JSON.parse((await redis.get(`${prefix}:delivery:github:sha256:${digest('{"zen":"hi"}')}:*`))!)).toMatchObject({ outcome: 'skipped', reason: 'ping' });
    expect(ping.json().duplicate).toBeUndefined();
    const pingAgain = await sendPush('{"zen":"hi"}', 'delivery-5', sign('{"zen":"hi"}'), 'ping');
    expect(pingAgain.json()).toMatchObject({ ok: true, duplicate: true });
    const filtered = await sendPush(pushBody(firstCommit, 'dev'), 'delivery-5b');
    expect(filtered.statusCode).toBe(200);
    expect(JSON.parse((await redis.get(`${prefix}:delivery:github:sha256:${digest(pushBody(firstCommit, 'dev'))}:hello`))!)).toMatchObject({ outcome: 'skipped', reason: expect.stringContaining('branch dev') });
    const before = await runCount();
    // Another push to dev (another body: deliveries are told apart by what is signed).
    const dev = await sendPush(JSON.stringify({ ...JSON.parse(pushBody(firstCommit, 'dev')), before: '1'.repeat(40) }), 'delivery-6');
    expect(dev.statusCode).toBe(200);
    expect(dev.json().reason).toContain('branch dev');
    const other = await sendPush(pushBody(firstCommit, 'main', 'https://github.com/someone/else.git'), 'delivery-7');
    expect(other.statusCode).toBe(404);
    // Branch filters speak of branches: a push to another kind of ref runs nothing, and says why.
    const pull = JSON.stringify({ ...JSON.parse(pushBody(firstCommit)), ref: 'refs/pull/1/head' });
    const pr = await sendPush(pull, 'delivery-7b');
    expect(pr.statusCode).toBe(200);
    expect(pr.json().reason).toBe('ref refs/pull/1/head is neither a branch nor a tag');
    const forged = JSON.stringify({ ...JSON.parse(pushBody(firstCommit)), ref: 'refs/x/a\n[source] stored snapshot FAKE' });
    const badRef = await sendPush(forged, 'delivery-7c');
    expect(badRef.statusCode).toBe(400);
    expect(badRef.json().errors.map((e: { path: string }) => e.path)).toContain('body.ref');
    const junk = await sendPush('{"ref": 1}', 'delivery-8');
    expect(junk.statusCode).toBe(400);
    expect(junk.json().errors.map((e: { path: string }) => e.path)).toContain('body.ref');
    expect(await runCount()).toBe(before);
  });
});

describe('GitHub webhook edge cases', () => {
  it('the per-pipeline endpoint checks only that pipeline\'s secret', async () => {
    const head = JSON.stringify({ ...JSON.parse(pushBody(firstCommit)), before: '2'.repeat(40) });
    const ok = await sendPush(head, 'delivery-p1', sign(head), 'push', '/webhooks/github/hello');
    expect(ok.statusCode).toBe(202);
    const unknown = await sendPush(head, 'delivery-p2', sign(head), 'push', '/webhooks/github/nope');
    expect(unknown.statusCode).toBe(401);
  });

  it('an overlong or odd delivery id is a 400 naming the header, never a 500', async () => {
    const body = pushBody(firstCommit);
    const res = await sendPush(body, 'x'.repeat(300));
    expect(res.statusCode).toBe(400);
    expect(res.json().errors[0].path).toBe('headers.x-github-delivery');
  });
});

describe('stage outcomes', () => {
  it('fails the run as soon as its stage job fails for good, without a result', async () => {
    const res = await service.app.inject({ method: 'POST', url: '/api/v1/pipelines/hello/runs', headers: auth, payload: {} });
    const { runId } = res.json();
    await waitFor(async () => ((await getRun(runId)).stages[1]!.status === 'RUNNING' ? true : undefined), 'build to start');
    // A build worker that dies on every delivery: BullMQ fails the job, no StageResult is ever returned.
    const workerRedis = new Redis(redisUrl, { maxRetriesPerRequest: null });
    const worker = new Worker(QUEUES.build, async (job) => {
      if ((job.data as StageJob).runId !== runId) throw new Error('not mine');
      throw new Error('worker exploded');
    }, { connection: workerRedis, prefix });
    // The job's `failed` event reaches the orchestrator: no reconciler pass is needed.
    const run = await waitFor(async () => {
      const r = await getRun(runId);
      return r.status === 'FAILED' ? r : undefined;
    }, 'run to fail', 30_000);
    await worker.close();
    workerRedis.disconnect();
    expect(run.stages[1]).toMatchObject({ status: 'FAILED', message: 'worker exploded' });
    // Only the last attempt's failure reached the run: the retries before it were not outcomes.
    const build = new Queue(QUEUES.build, { connection: redis, prefix });
    expect((await build.getJob(`${runId}.Build.1`))!.attemptsMade).toBe(3);
    await build.close();
  });
});

describe('reconciler', () => {
  /** An orchestrator with no results consumer: outcome events are never read, as if BullMQ had trimmed them. */
  async function deafOrchestrator() {
    const p = uniquePrefix('deaf');
    const conn = new Redis(redisUrl, { maxRetriesPerRequest: null });
    const queues = new Map(Object.values(QUEUES).map((name) => [name, createQueue(name, { connection: conn, prefix: p })]));
    const runs = new RedisRunStore(redis, p);
    const orchestrator = new Orchestrator({ runs, jobs: new BullJobDispatcher(queues, { redis: conn, prefix: p }), logger: createLogger('test', 'silent'), newId: randomUUID });
    const definition = PipelineDefinition.parse({ name: 'deaf', source: { provider: 'generic', repository: 'file:///nowhere.git' }, stages: [{ name: 'Build', type: 'build' }] });
    const close = async () => {
      await Promise.all([...queues.values()].map((q) => q.close()));
      conn.disconnect();
    };
    return { p, conn, queues, runs, orchestrator, definition, close };
  }

  it('settles a finished job whose outcome event was lost, from the result the job completed with', async () => {
    const deaf = await deafOrchestrator();
    const { runId } = await deaf.orchestrator.startRun(deaf.definition, { type: 'manual', ref: 'refs/heads/main' });
    const at = new Date().toISOString();
    const worker = new Worker(QUEUES.source, async (job) => ({
      v: 1, jobId: job.id, runId, stage: 'Source', stageIndex: 0, attempt: 1, status: 'SUCCEEDED', startedAt: at, finishedAt: at,
      output: { commit: 'c'.repeat(40), artifact: { key: 'runs/x/Source-1.tar', sha256: '0'.repeat(64), bytes: 1 } },
    }), { connection: deaf.conn.duplicate(), prefix: deaf.p });
    const source = deaf.queues.get(QUEUES.source)!;
    await waitFor(async () => ((await (await source.getJob(`${runId}.Source.1`))?.getState()) === 'completed' ? true : undefined), 'source job to complete');
    await worker.close();
    expect((await deaf.runs.get(runId!))!.stages[0]!.status).toBe('RUNNING');
    expect(await deaf.orchestrator.reconcile()).toEqual({ checked: 1, settled: 1 });
    const run = (await deaf.runs.get(runId!))!;
    expect(run.stages.map((s) => s.status)).toEqual(['SUCCEEDED', 'RUNNING']);
    // ...and the next stage's job was enqueued, once.
    expect(await deaf.queues.get(QUEUES.build)!.getJobCountByTypes('waiting')).toBe(1);
    await deaf.close();
  });

  it('enqueues the pending job a crash left unsent, and fails a stage whose job failed for good', async () => {
    const deaf = await deafOrchestrator();
    const { runId } = await deaf.orchestrator.startRun(deaf.definition, { type: 'manual', ref: 'refs/heads/main' });
    const source = deaf.queues.get(QUEUES.source)!;
    // As if the process died between storing the run and enqueueing its job.
    await (await source.getJob(`${runId}.Source.1`))!.remove();
    expect(await deaf.orchestrator.reconcile()).toEqual({ checked: 1, settled: 0 });
    expect(await (await source.getJob(`${runId}.Source.1`))!.getState()).toBe('waiting');
    const worker = new Worker(QUEUES.source, async () => {
      throw new UnrecoverableError('malformed source job');
    }, { connection: deaf.conn.duplicate(), prefix: deaf.p });
    await waitFor(async () => ((await (await source.getJob(`${runId}.Source.1`))?.getState()) === 'failed' ? true : undefined), 'source job to fail');
    await worker.close();
    await deaf.orchestrator.reconcile();
    const run = (await deaf.runs.get(runId!))!;
    expect(run.status).toBe('FAILED');
    expect(run.stages[0]).toMatchObject({ status: 'FAILED', message: 'malformed source job' });
    await deaf.close();
  });
});

describe('trigger globs', () => {
  /** Against a file named `a`×120, picomatch's regex for this glob backtracks for hours. */
  const CATASTROPHIC = `${'*a'.repeat(10)}*b`;
  const DEEP = `${'!('.repeat(33)}a${')'.repeat(33)}`;
  const definition = (name: string, filePaths: { include: string[]; exclude?: string[] }) => ({
    name,
    source: { provider: 'github', repository: `file://${dir}/globs-repo`, webhookSecret: SECRET, triggers: [{ event: 'push', branches: { include: ['main'] }, filePaths }] },
    stages: [{ name: 'Build', type: 'build' }],
  });
  const define = (payload: Record<string, unknown>) => service.app.inject({ method: 'POST', url: '/api/v1/pipelines', headers: auth, payload });

  it('a definition whose trigger glob nests too deep is a 400 naming the field, and is not stored', async () => {
    const res = await define(definition('deep', { include: ['src/**'], exclude: ['docs/**', DEEP] }));
    expect(res.statusCode).toBe(400);
    expect(res.headers['content-type']).toContain('application/problem+json');
    expect(res.json().errors).toEqual([{ path: 'source.triggers.0.filePaths.exclude.1', message: 'the glob nests ( and { groups 33 deep, more than the 32 allowed; simplify it' }]);
    expect((await service.app.inject({ method: 'GET', url: '/api/v1/pipelines/deep', headers: auth })).statusCode).toBe(404);
  });

  it('a push whose changed file makes a trigger glob backtrack runs nothing: one decision, whose reason names the glob', async () => {
    expect((await define(definition('slow', { include: ['src/**', CATASTROPHIC] }))).statusCode).toBe(201);
    const body = JSON.stringify({ ref: 'refs/heads/main', after: 'c'.repeat(40), repository: { clone_url: `file://${dir}/globs-repo` }, commits: [{ added: ['a'.repeat(120)] }] });
    const res = await sendPush(body, 'd-globs-1', sign(body), 'push', '/webhooks/github/slow');
    const digest = createHash('sha256').update(body).digest('hex');
    const reason = `source.triggers.0.filePaths.include.1: the glob "${CATASTROPHIC}" took longer than ${TRIGGER_GLOB_LIMITS.perGlobMs / 1000} s to match; simplify it`;
    expect(res.statusCode).toBe(200);
    expect(res.json()).toMatchObject({ skipped: true, reason, runs: [{ pipeline: 'slow', outcome: 'skipped', duplicate: false }] });
    const recorded = await redis.keys(`${prefix}:delivery:github:sha256:${digest}:*`);
    expect(recorded).toEqual([`${prefix}:delivery:github:sha256:${digest}:slow`]);
    expect(JSON.parse((await redis.get(recorded[0]!))!)).toMatchObject({ outcome: 'skipped', reason });
    const runs = await service.app.inject({ method: 'GET', url: '/api/v1/pipelines/slow/runs', headers: auth });
    expect(runs.json().runs).toEqual([]);
    expect((await service.app.inject({ method: 'GET', url: '/api/v1/pipelines/slow', headers: auth })).statusCode).toBe(200);
  });
});

describe('variables in a definition', () => {
  it('a reference that can never resolve is a 400 naming its field, and the pipeline is not stored', async () => {
    const res = await service.app.inject({
      method: 'POST',
      url: '/api/v1/pipelines',
      headers: auth,
      payload: {
        name: 'unresolvable',
        source: { provider: 'generic', repository: 'file:///nowhere.git' },
        stages: [
          { name: 'Build', type: 'build' },
          { name: 'Deploy', type: 'deploy', target: { kind: 'local', command: 'node server.js', env: { VERSION: '#{Build.APP_VERSION}', WHERE: '#{Monitor.URL}' } } },
        ],
      },
    });
    expect(res.statusCode).toBe(400);
    expect(res.json().errors).toEqual([{ path: 'stages.1.target.env.WHERE', message: '#{Monitor.URL}: no build or test stage Monitor runs before this one' }]);
    expect((await service.app.inject({ method: 'GET', url: '/api/v1/pipelines/unresolvable', headers: auth })).statusCode).toBe(404);
  });
});

describe('pipeline-level variables', () => {
  it('a run started by hand takes the values given, else the defaults; unknown names and missing values are a 400 naming the field', async () => {
    const definition = {
      name: 'with-vars',
      source: { provider: 'generic', repository: `file://${repoDir}` },
      variables: [{ name: 'REGION', defaultValue: 'eu-west-1', description: 'where' }, { name: 'TICKET' }],
      stages: [{ name: 'Build', type: 'build', env: { variables: { WHERE: '#{variables.REGION}', FOR: '#{variables.TICKET}' } } }],
    };
    const put = await service.app.inject({ method: 'POST', url: '/api/v1/pipelines', headers: auth, payload: definition });
    expect(put.statusCode, put.body).toBe(201);
    expect(put.json().variables).toEqual(definition.variables);
    const start = (payload: unknown) => service.app.inject({ method: 'POST', url: '/api/v1/pipelines/with-vars/runs', headers: auth, payload: payload as object });

    const missing = await start({});
    expect(missing.statusCode).toBe(400);
    expect(missing.headers['content-type']).toContain('application/problem+json');
    expect(missing.json().errors).toEqual([{ path: 'body.variables', message: 'no value for TICKET, which has no default value' }]);
    const unknown = await start({ variables: [{ name: 'TICKET', value: 'OPS-1' }, { name: 'REGON', value: 'x' }] });
    expect(unknown.statusCode).toBe(400);
    expect(unknown.json().errors).toEqual([{ path: 'body.variables.1.name', message: 'pipeline with-vars declares no variable REGON' }]);
    const empty = await start({ variables: [{ name: 'TICKET', value: '' }] });
    expect(empty.statusCode).toBe(400);
    expect(empty.json().errors[0].path).toBe('body.variables.0.value');
    const twice = await start({ variables: [{ name: 'TICKET', value: 'a' }, { name: 'TICKET', value: 'b' }] });
    expect(twice.statusCode).toBe(400);
    expect(twice.json().errors[0]).toEqual({ path: 'body.variables.1.name', message: '"TICKET" given twice' });
    const refused = await service.app.inject({ method: 'GET', url: '/api/v1/pipelines/with-vars/runs', headers: auth });
    expect(refused.json().runs).toEqual([]);

    const ok = await start({ variables: [{ name: 'TICKET', value: 'OPS-1' }] });
    expect(ok.statusCode, ok.body).toBe(202);
    expect((await getRun(ok.json().runId)).variables).toEqual({ REGION: 'eu-west-1', TICKET: 'OPS-1' });
    const overridden = await start({ variables: [{ name: 'TICKET', value: 'OPS-2' }, { name: 'REGION', value: 'us-east-2' }] });
    expect((await getRun(overridden.json().runId)).variables).toEqual({ REGION: 'us-east-2', TICKET: 'OPS-2' });
  });

  it('a push run of a pipeline whose stage needs a variable with no default fails as it is created, and is never active', async () => {
    const repo = 'file:///srv/git/needs-ticket.git';
    const put = await service.app.inject({
      method: 'POST',
      url: '/api/v1/pipelines',
      headers: auth,
      payload: {
        name: 'needs-ticket',
        source: { provider: 'github', repository: repo, webhookSecret: SECRET },
        variables: [{ name: 'TICKET' }],
        stages: [{ name: 'Build', type: 'build' }, { name: 'Deploy', type: 'deploy', target: { kind: 'local', command: 'node server.js', env: { FOR: '#{variables.TICKET}' } } }],
      },
    });
    expect(put.statusCode, put.body).toBe(201);
    const res = await sendPush(pushBody(firstCommit, 'main', repo), `needs-ticket-${randomUUID()}`);
    expect(res.statusCode, res.body).toBe(202);
    // Checked before the run is read: reading an ended run that is listed active takes it off the list.
    expect(await redis.sismember(`${prefix}:active-runs`, res.json().runId)).toBe(0);
    const run = await getRun(res.json().runId);
    expect(run.status).toBe('FAILED');
    expect(run.stages.map((s) => s.status)).toEqual(['FAILED', 'SKIPPED', 'SKIPPED']);
    expect(run.stages[0]!.message).toBe("#{variables.TICKET} in Deploy's target.env.FOR has no value: it has no default value, and only a run started by hand can be given one");
    expect(run.message).toBe(`stage Source failed: ${run.stages[0]!.message}`);
  });

  it('a reference to an undeclared pipeline variable is a 400 when the pipeline is defined', async () => {
    const res = await service.app.inject({
      method: 'POST',
      url: '/api/v1/pipelines',
      headers: auth,
      payload: { name: 'undeclared', source: { provider: 'generic', repository: 'file:///nowhere.git' }, stages: [{ name: 'Build', type: 'build', env: { variables: { A: '#{variables.NOPE}' } } }] },
    });
    expect(res.statusCode).toBe(400);
    expect(res.json().errors).toEqual([{ path: 'stages.0.env.variables.A', message: '#{variables.NOPE}: no pipeline variable NOPE is declared (under variables)' }]);
  });
});

describe('artifact downloads', () => {
  it("gives a stage's artifact as the tar stages exchange, with its digest; 404 naming why when there is none", async () => {
    const started = await service.app.inject({ method: 'POST', url: '/api/v1/pipelines/hello/runs', headers: auth, payload: {} });
    const run = await waitFor(async () => {
      const r = await getRun(started.json().runId);
      return r.stages[0]!.status === 'RUNNING' ? undefined : r;
    }, 'Source to finish');
    const ref = run.stages[0]!.result!.artifact!;
    expect(ref).toBeDefined();
    const url = `/api/v1/runs/${run.id}/stages/Source/artifact`;
    expect((await service.app.inject({ method: 'GET', url })).statusCode).toBe(401);

    const res = await service.app.inject({ method: 'GET', url, headers: auth });
    expect(res.statusCode, res.body).toBe(200);
    expect(res.headers['content-type']).toBe('application/x-tar');
    expect(Number(res.headers['content-length'])).toBe(ref.bytes);
    expect(res.headers['content-disposition']).toBe(`attachment; filename="hello-${run.number}-Source.tar"`);
    expect(res.headers['repr-digest']).toBe(`sha-256=:${Buffer.from(ref.sha256, 'hex').toString('base64')}:`);
    expect(createHash('sha256').update(res.rawPayload).digest('hex')).toBe(ref.sha256);
    const tarFile = join(dir, 'download.tar');
    await writeFile(tarFile, res.rawPayload);
    const listed = (await exec('tar', ['-tf', tarFile])).stdout.split('\n');
    expect(listed).toContain('README.md');

    expect(res.headers['cache-control']).toBe('private, no-cache');
    // HEAD: the headers alone. A matching If-None-Match: 304, no body.
    const head = await service.app.inject({ method: 'HEAD', url, headers: auth });
    expect(head.statusCode).toBe(200);
    expect(Number(head.headers['content-length'])).toBe(ref.bytes);
    expect(head.rawPayload.length).toBe(0);
    const cached = await service.app.inject({ method: 'GET', url, headers: { ...auth, 'if-none-match': `W/"x", "${ref.sha256}"` } });
    expect(cached.statusCode).toBe(304);
    expect(cached.rawPayload.length).toBe(0);
    expect(cached.headers.etag).toBe(`"${ref.sha256}"`);
    // Weak comparison, and `*` while the artifact is stored.
    expect((await service.app.inject({ method: 'GET', url, headers: { ...auth, 'if-none-match': `W/"${ref.sha256}"` } })).statusCode).toBe(304);
    expect((await service.app.inject({ method: 'GET', url, headers: { ...auth, 'if-none-match': '*' } })).statusCode).toBe(304);

    const none = await service.app.inject({ method: 'GET', url: `/api/v1/runs/${run.id}/stages/Build/artifact`, headers: auth });
    expect(none.statusCode).toBe(404);
    expect(none.headers['content-type']).toContain('application/problem+json');
    expect(none.json().detail).toMatch(new RegExp(`^stage Build of run ${run.id} stored no artifact \\(it is (PENDING|RUNNING|SKIPPED|FAILED|SUCCEEDED)\\)$`));

    // A record naming an artifact that is not its stage's own (another run's) gives nothing.
    const other = await service.app.inject({ method: 'POST', url: '/api/v1/pipelines/hello/runs', headers: auth, payload: {} });
    const key = `${prefix}:run:${other.json().runId}`;
    const foreign = await waitFor(async () => {
      const r = await getRun(other.json().runId);
      return r.stages[0]!.status === 'RUNNING' ? undefined : r;
    }, 'the other Source to finish');
    expect(foreign.stages[0]!.result!.artifact).toBeDefined();
    const json = JSON.parse((await redis.hget(key, 'json'))!);
    json.stages[0].result.artifact = ref;
    await redis.hset(key, 'json', JSON.stringify(json));
    const borrowed = await service.app.inject({ method: 'GET', url: `/api/v1/runs/${foreign.id}/stages/Source/artifact`, headers: auth });
    expect(borrowed.statusCode).toBe(404);

    // A stored file that is not what the run recorded: a 500, without the artifact's headers.
    const path = join(dir, 'artifacts', ref.key);
    const bytes = await readFile(path);
    bytes[10] = bytes[10]! ^ 0xff;
    await writeFile(path, bytes);
    const corrupt = await service.app.inject({ method: 'GET', url, headers: auth });
    expect(corrupt.statusCode).toBe(500);
    expect(corrupt.headers['content-disposition']).toBeUndefined();
    const nostage = await service.app.inject({ method: 'GET', url: `/api/v1/runs/${run.id}/stages/Nope/artifact`, headers: auth });
    expect(nostage.json().detail).toBe(`run ${run.id} has no stage Nope`);

    // Removed by retention: said so.
    await rm(join(dir, 'artifacts', 'runs', run.id), { recursive: true });
    const gone = await service.app.inject({ method: 'GET', url, headers: auth });
    expect(gone.statusCode).toBe(404);
    expect((await service.app.inject({ method: 'GET', url, headers: { ...auth, 'if-none-match': '*' } })).statusCode).toBe(404);
    expect(gone.json().detail).toBe(`the artifact of stage Source of run ${run.id} is no longer stored (removed by artifact retention, or this service reads another ARTIFACT_DIR than the stages write)`);
  });
});
