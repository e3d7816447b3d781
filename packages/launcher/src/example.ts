import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { cp, mkdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import type { ConveyorClient } from './api-client.js';
import { REPO_ROOT } from './stack.js';

const exec = promisify(execFile);
// The example's copy is the launcher's: none of the person's git settings apply to it (a global
// commit.gpgsign=true would make every commit wait for a key, hooks or templates would run).
const GIT_ENV = {
  ...process.env,
  GIT_CONFIG_GLOBAL: '/dev/null',
  GIT_CONFIG_NOSYSTEM: '1',
  GIT_AUTHOR_NAME: 'Conveyor',
  GIT_AUTHOR_EMAIL: 'launcher@conveyor.invalid',
  GIT_COMMITTER_NAME: 'Conveyor',
  GIT_COMMITTER_EMAIL: 'launcher@conveyor.invalid',
};
const git = async (cwd: string, ...args: string[]) => (await exec('git', ['-c', 'commit.gpgsign=false', ...args], { cwd, env: GIT_ENV })).stdout.trim();

export interface ExampleRepo {
  dir: string;
  url: string;
  commit: string;
  before: string;
}

/** Keeps `<home>/repos/hello-service` a git copy of examples/hello-service and commits any change. */
export async function prepareExampleRepo(home: string): Promise<ExampleRepo> {
  const dir = join(home, 'repos', 'hello-service');
  const exists = await stat(join(dir, '.git')).then(() => true, () => false);
  if (!exists) {
    await mkdir(dir, { recursive: true });
    await git(dir, 'init', '-q', '-b', 'main');
  }
  const before = exists ? await git(dir, 'rev-parse', 'HEAD').catch(() => '0'.repeat(40)) : '0'.repeat(40);
  for (const entry of ['server.js', 'greet.js', 'VERSION', 'package.json', 'test', 'buildspec.yml', 'buildspec-test.yml', 'README.md']) {
    await rm(join(dir, entry), { recursive: true, force: true });
    await cp(join(REPO_ROOT, 'examples', 'hello-service', entry), join(dir, entry), { recursive: true });
  }
  await git(dir, 'add', '-A');
  const dirty = (await git(dir, 'status', '--porcelain')) !== '';
  if (dirty || !exists) await git(dir, 'commit', '-q', '--allow-empty', '-m', `hello-service snapshot ${new Date().toISOString()}`);
  return { dir, url: `file://${dir}`, commit: await git(dir, 'rev-parse', 'HEAD'), before };
}

/** The example's pipeline.yml with the repository and a webhook secret filled in (the secret is kept in home). */
export async function examplePipelineYaml(home: string, repositoryUrl: string): Promise<{ yaml: string; secret: string }> {
  const secretFile = join(home, 'example-webhook-secret');
  let secret = await readFile(secretFile, 'utf8').then((s) => s.trim(), () => '');
  if (secret.length < 16) {
    secret = randomBytes(24).toString('hex');
    await writeFile(secretFile, `${secret}\n`, { mode: 0o600 });
  }
  const template = await readFile(join(REPO_ROOT, 'examples', 'hello-service', 'pipeline.yml'), 'utf8');
  const yaml = template.replace('${REPOSITORY}', JSON.stringify(repositoryUrl)).replace('${WEBHOOK_SECRET}', JSON.stringify(secret));
  return { yaml, secret };
}

const ICON: Record<string, string> = { SUCCEEDED: '✔', FAILED: '✖', SKIPPED: '–', CANCELLED: '⊘', RUNNING: '▶' };

function stageDetail(stage: any): string {
  const r = stage.result ?? {};
  if (r.commit) return `commit ${String(r.commit).slice(0, 12)}`;
  if (r.url) return `serving at ${r.url}`;
  if (r.probes) return `${r.probes.total} probes, ${r.probes.failed} failed, p95 ${Math.round(r.probes.p95Ms)} ms`;
  // A build may count its reports too: both are said.
  const parts = [
    ...(r.tests ? [`tests: ${r.tests.passed} passed, ${r.tests.failed} failed, ${r.tests.skipped} skipped`] : []),
    ...(r.artifact ? [`artifact ${r.artifact.bytes} bytes`] : []),
  ];
  return parts.length ? parts.join('; ') : (stage.message ?? '');
}

/** How long the watch of a run rides out the API not answering (source-webhook restarted by the supervisor, say). */
export const WATCH_OUTAGE_MS = 60_000;

/**
 * Polls the run and prints each stage change until the run ends; returns the final run. A failed poll
 * (no connection, a 5xx) is tried again for up to `outageMs`; a 4xx is an answer, and ends the watch.
 */
export async function watchRun(client: ConveyorClient, runId: string, print: (line: string) => void, timeoutMs = 10 * 60_000, outageMs = WATCH_OUTAGE_MS): Promise<any> {
  const seen = new Map<string, string>();
  const deadline = Date.now() + timeoutMs;
  let failingSince: number | undefined;
  for (;;) {
    let run: any;
    try {
      run = await client.getRun(runId);
      failingSince = undefined;
    } catch (err) {
      const status = (err as { status?: number }).status;
      if (status !== undefined && status < 500) throw err;
      failingSince ??= Date.now();
      if (Date.now() - failingSince > outageMs) throw new Error(`run ${runId}: the API has not answered for ${outageMs / 1000} s (${(err as Error).message})`);
      await new Promise((r) => setTimeout(r, 500));
      continue;
    }
    for (const stage of run.stages) {
      if (seen.get(stage.name) === stage.status || stage.status === 'PENDING') continue;
      seen.set(stage.name, stage.status);
      const secs = stage.startedAt && stage.finishedAt ? ` ${((Date.parse(stage.finishedAt) - Date.parse(stage.startedAt)) / 1000).toFixed(1)}s` : '';
      print(`  ${ICON[stage.status] ?? '?'} ${stage.name.padEnd(10)} ${stage.status.padEnd(10)}${secs.padEnd(7)} ${stage.status === 'RUNNING' ? '' : stageDetail(stage)}`);
    }
    if (['SUCCEEDED', 'FAILED', 'CANCELLED'].includes(run.status)) return run;
    if (Date.now() > deadline) throw new Error(`run ${runId} still ${run.status} after ${timeoutMs / 1000} s`);
    await new Promise((r) => setTimeout(r, 200));
  }
}
