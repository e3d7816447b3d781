import { spawnSync } from 'node:child_process';
import { createHash, randomUUID } from 'node:crypto';
import { chmod, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ConveyorClient, examplePipelineYaml, prepareExampleRepo, startStack, watchRun, type ExampleRepo, type Stack } from '@conveyor/launcher';
import { pidAlive } from '@conveyor/procfs';
import { commitFiles, completedResults, freePortRange, git, testRedis } from '@conveyor/testing';

/**
 * The whole system as a user runs it: the launcher's five service processes, real Redis, a real git
 * repository, signed webhooks over HTTP, builds in bash, a deployed process answering HTTP.
 */
let home: string;
let stack: Stack;
let client: ConveyorClient;
let repo: ExampleRepo;
let secret: string;
const PREFIX = `e2e${Date.now()}`;
const quiet = () => undefined;

async function push(after: string, deliveryId = randomUUID(), sign = secret) {
  return client.sendGithubPush({ secret: sign, repository: repo.url, branch: 'main', after, deliveryId });
}

async function served(url: string): Promise<{ version: string; commit: string }> {
  return (await fetch(`${url}/`)).json() as Promise<{ version: string; commit: string }>;
}

async function runIds(pipeline = 'hello-service'): Promise<string[]> {
  return (await client.request('GET', `/api/v1/pipelines/${pipeline}/runs`)).json.runs.map((r: { id: string }) => r.id);
}

beforeAll(async () => {
  home = await mkdtemp(join(tmpdir(), 'cv-e2e-'));
  // Like a checkout's .conveyor/: reachable by `nobody`, whom builds run as when the services run as root.
  await chmod(home, 0o755);
  const redis = await testRedis();
  stack = await startStack({
    home,
    portBase: await freePortRange(5),
    env: { ...process.env, REDIS_URL: redis.url, QUEUE_PREFIX: PREFIX, LOG_LEVEL: 'info' },
    // Short BullMQ locks so a killed worker's job is picked up again within seconds.
    // A register of deploy user ids of its own, so this stack's versions and another's on the host never share one.
    serviceEnv: { WORKER_LOCK_MS: '3000', WORKER_STALLED_MS: '2000', RECONCILE_INTERVAL_MS: '2000', DEPLOY_UID_CLAIMS_DIR: join(home, 'uid-claims') },
  });
  client = new ConveyorClient(stack.urls['source-webhook'], stack.apiToken);
  repo = await prepareExampleRepo(home);
  const pipeline = await examplePipelineYaml(home, repo.url);
  secret = pipeline.secret;
  await client.registerPipeline(pipeline.yaml.replace('durationSeconds: 10', 'durationSeconds: 2'));
}, 180_000);

afterAll(async () => {
  await stack?.stop();
  await rm(home, { recursive: true, force: true });
  await (await testRedis()).stop();
}, 60_000);

describe('a push becomes a deployed, verified service', () => {
  let firstUrl: string;

  it('a signed push runs Source → Build → Test → Deploy → Monitor to SUCCEEDED', async () => {
    const res = await push(repo.commit);
    expect(res.status).toBe(202);
    const run = await watchRun(client, res.json.runId, quiet, 180_000);
    expect(run.status).toBe('SUCCEEDED');
    expect(run.stages.map((s: { name: string; status: string }) => `${s.name}:${s.status}`)).toEqual([
      'Source:SUCCEEDED', 'Build:SUCCEEDED', 'Test:SUCCEEDED', 'Deploy:SUCCEEDED', 'Monitor:SUCCEEDED',
    ]);
    expect(run.trigger).toMatchObject({ type: 'webhook', commit: repo.commit });
    // Counted from the JUnit file the example's tests wrote: 4 test cases, all passing.
    expect(run.stages[2].result.tests).toEqual({ total: 4, passed: 4, failed: 0, skipped: 0 });
    expect(run.stages[4].result.probes.failed).toBe(0);
    firstUrl = run.stages[3].result.url;
    // The Deploy stage's RELEASE: the version the Build stage exported, and the run; DEPLOY_ENV: the pipeline variable's default (CodePipeline's variables).
    expect(await served(firstUrl)).toMatchObject({ version: '1.0.0', commit: repo.commit, release: `1.0.0+${run.id}`, environment: 'local' });
    expect(run.variables).toEqual({ DEPLOY_ENV: 'local' });
    // The build's artifact, downloaded as stored: the bytes its digest names.
    const download = await fetch(`${client.baseUrl}/api/v1/runs/${run.id}/stages/Build/artifact`, { headers: { authorization: `Bearer ${stack.apiToken}` } });
    expect(download.status).toBe(200);
    const head = await fetch(download.url, { method: 'HEAD', headers: { authorization: `Bearer ${stack.apiToken}` } });
    expect([head.status, Number(head.headers.get('content-length'))]).toEqual([200, run.stages[1].result.artifact.bytes]);
    expect(createHash('sha256').update(Buffer.from(await download.arrayBuffer())).digest('hex')).toBe(run.stages[1].result.artifact.sha256);
    const buildLog = await client.logs(run.id, 'Build');
    expect(buildLog).toContain(`Building hello-service at ${repo.commit}`);
    // Services running as root run each build as a user of its own (BUILD_UIDS), out of reach of their environment.
    if (process.getuid?.() === 0) expect(Number(/, as uid (\d+)/.exec(buildLog)?.[1])).toBeGreaterThanOrEqual(2_000_000_000);
  });

  it("keeps the services' logs and temporary files (tsx's cache among them) to the launcher's user", async () => {
    expect((await stat(join(home, 'logs'))).mode & 0o777).toBe(0o700);
    expect((await stat(join(home, 'logs', 'build.log'))).mode & 0o777).toBe(0o600);
    expect((await stat(join(home, 'tmp'))).mode & 0o777).toBe(0o700);
    const environ = await readFile(`/proc/${stack.processes.get('build')!.pid}/environ`, 'utf8');
    expect(environ.split('\0')).toContain(`TMPDIR=${join(home, 'tmp')}`);
  });

  it('a new commit is deployed and replaces the old version', async () => {
    const commit = await commitFiles(repo.dir, { VERSION: '1.1.0\n' }, 'bump to 1.1.0');
    const res = await push(commit);
    const run = await watchRun(client, res.json.runId, quiet, 180_000);
    expect(run.status).toBe('SUCCEEDED');
    const url = run.stages[3].result.url;
    expect(await served(url)).toMatchObject({ version: '1.1.0', commit });
    await expect(fetch(`${firstUrl}/healthz`)).rejects.toThrow();
    firstUrl = url;
  });

  it('a commit with a failing test fails at Test, skips Deploy and Monitor, and the previous version keeps serving', async () => {
    const greet = await readFile(join(repo.dir, 'greet.js'), 'utf8');
    const commit = await commitFiles(repo.dir, { 'greet.js': greet.replace('Hello, ${name}!', 'Goodbye, ${name}!'), VERSION: '2.0.0\n' }, 'break greet');
    const res = await push(commit);
    const run = await watchRun(client, res.json.runId, quiet, 180_000);
    expect(run.status).toBe('FAILED');
    expect(run.stages.map((s: { status: string }) => s.status)).toEqual(['SUCCEEDED', 'SUCCEEDED', 'FAILED', 'SKIPPED', 'SKIPPED']);
    expect(run.stages[2].result.tests.failed).toBeGreaterThan(0);
    expect(run.stages[2].result.tests.total).toBe(4);
    expect(await served(firstUrl)).toMatchObject({ version: '1.1.0' });
    await git(repo.dir, 'revert', '--no-edit', 'HEAD');
  });

  it('the same delivery sent again creates no second run; a bad signature is refused with 401', async () => {
    const before = await runIds();
    const delivery = randomUUID();
    const head = await git(repo.dir, 'rev-parse', 'HEAD');
    const first = await push(head, delivery);
    const again = await push(head, delivery);
    expect(first.status).toBe(202);
    expect(again.status).toBe(200);
    expect(again.json.runId).toBe(first.json.runId);
    const forged = await push(head, randomUUID(), 'not-the-secret-at-all');
    expect(forged.status).toBe(401);
    expect((await runIds()).length).toBe(before.length + 1);
    await watchRun(client, first.json.runId, quiet, 180_000);
  });
});

describe('runs of one pipeline started together', () => {
  it('all succeed: the Monitor of a version a later deploy replaced says so, instead of failing on its stopped version', async () => {
    const { yaml } = await examplePipelineYaml(home, repo.url);
    // A long verification, so the second deploy lands while the first version is still being probed; a
    // probe or two slowed past its timeout on a loaded machine is tolerated (the replaced version would
    // fail many more, one a second, without the fix).
    const parallel = yaml.replace(/^name: .*$/m, 'name: hello-parallel').replace('durationSeconds: 10', 'durationSeconds: 30, maxFailures: 2');
    expect(parallel).toContain('name: hello-parallel');
    await client.registerPipeline(parallel);
    try {
      // Each run sets the pipeline variable DEPLOY_ENV (the first run of the file checked its default).
      const bodies = ['parallel-a', 'parallel-b'].map((value) => JSON.stringify({ variables: [{ name: 'DEPLOY_ENV', value }] }));
      const started = await Promise.all(bodies.map((body) => client.request('POST', '/api/v1/pipelines/hello-parallel/runs', body)));
      const runs = await Promise.all(started.map((r) => watchRun(client, r.json.runId, quiet, 240_000)));
      const how = JSON.stringify(runs.map((r) => r.stages.map((s: { name: string; status: string; message?: string }) => `${s.name}:${s.status}${s.message ? ` (${s.message})` : ''}`)));
      expect(runs.map((r) => r.status), how).toEqual(['SUCCEEDED', 'SUCCEEDED']);
      const replaced = runs.filter((r) => r.stages[4].result.supersededBy);
      expect(replaced).toHaveLength(1);
      const newer = runs.find((r) => r !== replaced[0])!;
      expect(replaced[0].stages[4].result.supersededBy).toEqual({ runId: newer.id, url: newer.stages[3].result.url });
      expect(await client.logs(replaced[0].id, 'Monitor')).toContain(`run ${newer.id} replaced this version`);
      expect(newer.stages[4].result.probes.failed).toBeLessThanOrEqual(2);
      expect((await fetch(`${newer.stages[3].result.url}/healthz`)).status).toBe(200);
      expect(runs.map((r) => r.variables)).toEqual([{ DEPLOY_ENV: 'parallel-a' }, { DEPLOY_ENV: 'parallel-b' }]);
      // Whichever went live last serves the value it was started with.
      expect(await served(newer.stages[3].result.url)).toMatchObject({ environment: newer.variables.DEPLOY_ENV });
    } finally {
      await client.request('DELETE', '/api/v1/pipelines/hello-parallel');
    }
  }, 300_000);
});

describe('a build service killed mid-build', () => {
  it('is restarted and the run still SUCCEEDS with the build result recorded once', async () => {
    const slowRepo = join(home, 'repos', 'slow');
    await git(home, 'init', '-q', '-b', 'main', slowRepo);
    const commit = await commitFiles(slowRepo, {
      'buildspec.yml': 'version: 0.2\nphases:\n  build:\n    commands:\n      - echo "build starting"\n      - sleep 6\n      - echo built > out.txt\nartifacts:\n  files:\n    - out.txt\n',
    });
    const yaml = `name: slow\nsource:\n  provider: generic\n  repository: "file://${slowRepo}"\nstages:\n  - { name: Build, type: build }\n`;
    await client.registerPipeline(yaml);
    const started = await client.request('POST', '/api/v1/pipelines/slow/runs', JSON.stringify({ commit }));
    expect(started.status).toBe(202);
    const runId = started.json.runId;

    // Wait until the build command is sleeping (its output line, not the echo of the command), then kill -9 the build service.
    const deadline = Date.now() + 60_000;
    while (!(await client.logs(runId, 'Build')).split('\n').includes('build starting')) {
      if (Date.now() > deadline) throw new Error('build never started');
      await new Promise((r) => setTimeout(r, 100));
    }
    const victim = stack.processes.get('build')!;
    const exited = new Promise((r) => victim.once('exit', r));
    victim.kill('SIGKILL');
    await exited;
    await stack.startService('build');

    const run = await watchRun(client, runId, quiet, 120_000);
    expect(run.status).toBe('SUCCEEDED');
    expect(run.stages[1]).toMatchObject({ name: 'Build', status: 'SUCCEEDED', attempt: 1 });
    expect(run.stages[1].result.artifact.bytes).toBeGreaterThan(0);

    // Recorded once: one stage.finished event for Build in the run's event stream.
    const redis = new Redis(stack.redis.url);
    const entries = await redis.xrange(`${PREFIX}:events`, '-', '+');
    redis.disconnect();
    const buildFinished = entries
      .map(([, fields]) => JSON.parse(fields[1]!))
      .filter((e) => e.runId === runId && e.type === 'stage.finished' && e.stage === 'Build');
    expect(buildFinished).toHaveLength(1);
    // The log shows the build was delivered twice: before and after the kill.
    const log = await client.logs(runId, 'Build');
    expect(log.split('\n').filter((line) => line === 'build starting'), log).toHaveLength(2);
  });
});

describe('every service killed -9 during a run, one after another', () => {
  it('is restarted each time, and the run still ends SUCCEEDED with each stage finished once and the new version serving', async () => {
    // The example in a repository of its own, its tests 3 s slower, and a pipeline whose Deploy starts a
    // version taking 3 s and whose Monitor lasts 6 s: each stage lasts long enough for its service to be
    // killed while it holds the job.
    const chaosRepo = await prepareExampleRepo(join(home, 'chaos'));
    const testSpec = await readFile(join(chaosRepo.dir, 'buildspec-test.yml'), 'utf8');
    await commitFiles(chaosRepo.dir, { 'buildspec-test.yml': testSpec.replace('      - mkdir -p reports', '      - sleep 3\n      - mkdir -p reports') });
    const yaml = (await examplePipelineYaml(home, chaosRepo.url)).yaml
      .replace('name: hello-service', 'name: chaos')
      .replace('command: "node server.js"', 'command: "sleep 3 && exec node server.js"')
      .replace('durationSeconds: 10', 'durationSeconds: 6');
    await client.registerPipeline(yaml);
    try {
      const started = await client.request('POST', '/api/v1/pipelines/chaos/runs', '{}');
      expect(started.status).toBe(202);
      const runId: string = started.json.runId;

      /** Until the stage has left PENDING (it may be past RUNNING already: the kill then comes later in the run, still a kill mid-run). */
      const reached = async (stage: string) => {
        const deadline = Date.now() + 120_000;
        for (;;) {
          const run = await client.getRun(runId);
          const s = run.stages.find((x: { name: string }) => x.name === stage);
          if (s.status !== 'PENDING') return s.status as string;
          if (Date.now() > deadline) throw new Error(`${stage} never started`);
          await new Promise((r) => setTimeout(r, 50));
        }
      };
      const killAndRestart = async (name: Parameters<Stack['startService']>[0]) => {
        const victim = stack.processes.get(name)!;
        const exited = new Promise((r) => victim.once('exit', r));
        victim.kill('SIGKILL');
        await exited;
        await stack.startService(name);
      };
      /** Until the stage's log shows `marker`: its service is then at work on it. */
      const working = async (stage: string, marker: string) => {
        await reached(stage);
        const deadline = Date.now() + 60_000;
        while (!(await client.logs(runId, stage)).includes(marker)) {
          if (Date.now() > deadline) throw new Error(`${stage} never logged ${marker}`);
          await new Promise((r) => setTimeout(r, 50));
        }
      };
      await reached('Build');
      await killAndRestart('source-webhook');
      await working('Test', '[conveyor] $ sleep 3');
      await killAndRestart('test-runner');
      await working('Deploy', 'started `sleep 3 && exec node server.js`');
      await killAndRestart('deployer');
      await working('Monitor', 'probe 1:');
      await killAndRestart('monitor');

      const run = await watchRun(client, runId, quiet, 180_000);
      expect(run.status).toBe('SUCCEEDED');
      expect(run.stages.map((s: { name: string; status: string }) => `${s.name} ${s.status}`)).toEqual(['Source SUCCEEDED', 'Build SUCCEEDED', 'Test SUCCEEDED', 'Deploy SUCCEEDED', 'Monitor SUCCEEDED']);
      expect(run.stages[2].result.tests.failed).toBe(0);
      // The stages whose services were killed were delivered again (the control plane's kill loses nothing:
      // the results it had not read wait in the streams). The version the killed deployer had started is gone (the
      // restarted deployer's sweep, or the next delivery, stopped it): its port answers no more.
      for (const stage of ['Test', 'Deploy', 'Monitor']) expect(await client.logs(runId, stage)).toContain('[conveyor] delivery 2 of this job');
      const [first, second] = [...(await client.logs(runId, 'Deploy')).matchAll(/as pid (\d+) on port (\d+)/g)].map((m) => ({ pid: Number(m[1]), port: Number(m[2]) }));
      expect(second).toBeDefined();
      expect(pidAlive(first!.pid)).toBe(false);
      if (first!.port !== second!.port) await expect(fetch(`http://127.0.0.1:${first!.port}/healthz`)).rejects.toThrow();
      const url: string = run.stages[3].result.url;
      expect((await served(url)).commit).toBe(run.stages[0].result.commit);
      // Each stage's result recorded once, however many times its job was delivered.
      const redis = new Redis(stack.redis.url);
      const entries = await redis.xrange(`${PREFIX}:events`, '-', '+');
      redis.disconnect();
      const finished = entries.map(([, fields]) => JSON.parse(fields[1]!)).filter((e) => e.runId === runId && e.type === 'stage.finished');
      expect(finished.map((e) => e.stage).sort()).toEqual(['Build', 'Deploy', 'Monitor', 'Source', 'Test']);
    } finally {
      await client.request('DELETE', '/api/v1/pipelines/chaos');
    }
  }, 300_000);
});

const fenceable = process.getuid?.() === 0 && process.env.REDIS_FENCE !== 'off' && ['iptables', 'ip6tables'].every((tool) => spawnSync(tool, ['-w', '5', '-S', 'OUTPUT']).status === 0);

describe.runIf(fenceable)('pipeline code and Redis (root services with iptables: REDIS_FENCE=auto)', () => {
  it('neither a build nor a deployed version can open a connection to Redis', async () => {
    const port = new URL(stack.redis.url).port || '6379';
    const fencedRepo = join(home, 'repos', 'fenced');
    await git(home, 'init', '-q', '-b', 'main', fencedRepo);
    // The deployed version says whether it reached Redis; /healthz answers either way.
    const server = [
      "const net = require('node:net'), http = require('node:http');",
      'let redis = "pending";',
      `net.connect(${port}, '127.0.0.1').on('connect', function () { redis = 'reached'; this.destroy(); }).on('error', (e) => (redis = e.code));`,
      "http.createServer((req, res) => res.end(JSON.stringify({ redis }))).listen(process.env.PORT, '127.0.0.1');",
    ].join('\n');
    const commit = await commitFiles(fencedRepo, {
      'server.js': server,
      'buildspec.yml': `version: 0.2\nphases:\n  build:\n    commands:\n      - ${JSON.stringify(`if exec 3<>/dev/tcp/127.0.0.1/${port}; then echo "redis: reached"; else echo "redis: refused"; fi`)}\nartifacts:\n  files:\n    - server.js\n`,
    });
    const yaml = `name: fenced\nsource:\n  provider: generic\n  repository: "file://${fencedRepo}"\nstages:\n  - { name: Build, type: build }\n  - { name: Deploy, type: deploy, target: { kind: local, command: "node server.js", healthPath: /healthz } }\n`;
    await client.registerPipeline(yaml);
    const runId = (await client.request('POST', '/api/v1/pipelines/fenced/runs', JSON.stringify({ commit }))).json.runId;
    const run = await watchRun(client, runId, quiet, 180_000);
    const log = await client.logs(runId, 'Build');
    expect(run.status, `${JSON.stringify(run.stages)}\n${log}`).toBe('SUCCEEDED');
    expect(log.split('\n')).toContain('redis: refused');
    expect(log.split('\n')).not.toContain('redis: reached');
    let seen = 'pending';
    for (let i = 0; i < 50 && seen === 'pending'; i++) {
      seen = ((await (await fetch(`${run.stages[2].result.url}/`)).json()) as { redis: string }).redis;
      if (seen === 'pending') await new Promise((r) => setTimeout(r, 100));
    }
    expect(seen).toBe('ECONNREFUSED');
  });
});

describe('a run cancelled mid-build', () => {
  it('ends CANCELLED at once, its build shell is stopped, and nothing after it runs', async () => {
    const cancelRepo = join(home, 'repos', 'cancel');
    await git(home, 'init', '-q', '-b', 'main', cancelRepo);
    const commit = await commitFiles(cancelRepo, {
      'buildspec.yml': 'version: 0.2\nphases:\n  build:\n    commands:\n      - sleep 120 & echo "sleeper $!"; wait\nartifacts:\n  files:\n    - buildspec.yml\n',
    });
    const yaml = `name: cancel-me\nsource:\n  provider: generic\n  repository: "file://${cancelRepo}"\nstages:\n  - { name: Build, type: build }\n  - { name: Deploy, type: deploy, target: { kind: local, command: "sleep 600", healthPath: /healthz } }\n`;
    await client.registerPipeline(yaml);
    const runId = (await client.request('POST', '/api/v1/pipelines/cancel-me/runs', JSON.stringify({ commit }))).json.runId;

    let sleeper = 0;
    const deadline = Date.now() + 60_000;
    while (!sleeper) {
      if (Date.now() > deadline) throw new Error('build never started');
      sleeper = Number(/sleeper (\d+)/.exec(await client.logs(runId, 'Build'))?.[1] ?? 0);
      await new Promise((r) => setTimeout(r, 100));
    }
    expect(pidAlive(sleeper)).toBe(true);

    const cancelled = await client.request('POST', `/api/v1/runs/${runId}/cancel`, JSON.stringify({ reason: 'not this one' }));
    expect(cancelled.status).toBe(202);
    expect(cancelled.json).toMatchObject({ status: 'CANCELLED', message: 'not this one' });
    expect(cancelled.json.stages.map((s: { status: string }) => s.status)).toEqual(['SUCCEEDED', 'CANCELLED', 'SKIPPED']);

    // The build service hears the notice and stops the build's process group.
    const stopBy = Date.now() + 15_000;
    while (pidAlive(sleeper) && Date.now() < stopBy) await new Promise((r) => setTimeout(r, 100));
    expect(pidAlive(sleeper)).toBe(false);
    const run = (await client.request('GET', `/api/v1/runs/${runId}`)).json;
    expect(run).toMatchObject({ status: 'CANCELLED' });
    expect(run.stages.map((s: { status: string }) => s.status)).toEqual(['SUCCEEDED', 'CANCELLED', 'SKIPPED']);
    expect((await client.request('POST', `/api/v1/runs/${runId}/cancel`, '{}')).status).toBe(202);
    // The build job ended once, as stopped, and stored no artifact.
    const redis = new Redis(stack.redis.url);
    try {
      const buildJob = `${runId}.Build.1`;
      let results: Awaited<ReturnType<typeof completedResults>> = [];
      for (let i = 0; i < 100 && results.length === 0; i++) {
        results = (await completedResults(redis, PREFIX, 'build')).filter((r) => r.jobId === buildJob);
        if (results.length === 0) await new Promise((r) => setTimeout(r, 100));
      }
      expect(results).toHaveLength(1);
      expect(results[0]).toMatchObject({ status: 'FAILED', message: 'stopped: the run was cancelled' });
      expect(results[0]!.output.artifact).toBeUndefined();
    } finally {
      redis.disconnect();
    }
  });
});

describe('the launcher', () => {
  it('refuses to start without a usable Redis, saying how to get one', async () => {
    // The services' five ports are checked before Redis: all must be free for the Redis check to be reached.
    const port = await freePortRange(5);
    const lonely = await mkdtemp(join(tmpdir(), 'cv-nored-'));
    await writeFile(join(lonely, 'x'), '');
    await expect(startStack({ home: lonely, portBase: port, env: { ...process.env, REDIS_URL: `redis://127.0.0.1:${port}` } })).rejects.toThrow(/does not answer PING/);
    await rm(lonely, { recursive: true, force: true });
  });
});
