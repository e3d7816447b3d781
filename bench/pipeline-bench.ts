import { spawn } from 'node:child_process';
import { chmod, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ConveyorClient, startStack } from '@conveyor/launcher';
import { commitFiles, freePortRange, initRepo } from '@conveyor/testing';

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

const BUILDSPEC = "version: 0.2\nphases:\n  build:\n    commands:\n      - 'true'\nartifacts:\n  files:\n    - '**/*'\n";

/** The same steps without Conveyor: snapshot the commit, then per stage unpack, run `true`, pack. */
const BASH_STEPS = `set -e
repo="$1"; commit="$2"; work="$3"
git -C "$repo" archive --format=tar -o "$work/source.tar" "$commit"
input="$work/source.tar"
for stage in Build Test Package Verify; do
  mkdir -p "$work/$stage"
  tar -xf "$input" -C "$work/$stage"
  (cd "$work/$stage" && bash -c true)
  tar -cf "$work/$stage.tar" -C "$work/$stage" .
  input="$work/$stage.tar"
done
`;

/**
 * Runs the steps as a person does from a terminal: stdin is not a socket. (Given a socket on stdin, bash
 * takes itself for a remote shell and reads ~/.bashrc, which on some machines costs 100 ms a shell.)
 */
function runBash(args: string[]): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn('bash', args, { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.once('error', reject);
    child.once('close', (code) => (code === 0 ? resolve() : reject(new Error(`bash steps exited ${code}: ${stderr.trim()}`))));
  });
}

async function pollUntilDone(client: ConveyorClient, runId: string): Promise<any> {
  for (;;) {
    const run = await client.getRun(runId);
    if (['SUCCEEDED', 'FAILED', 'CANCELLED'].includes(run.status)) return run;
    await new Promise((r) => setTimeout(r, 5));
  }
}

/** (b): Source + 4 stages of `true` through the five real service processes, against bash doing the same steps. */
export async function pipelineVsBash(redisUrl: string, rounds: number) {
  const home = await mkdtemp(join(tmpdir(), 'cv-bench-'));
  // mkdtemp makes it 0700: the builds' own users (under a root service) could not reach their work directories.
  await chmod(home, 0o755);
  const repo = await initRepo(join(home, 'repo'));
  const commit = await commitFiles(repo, { 'buildspec.yml': BUILDSPEC, 'app.txt': 'x\n' });
  const stack = await startStack({ home, portBase: await freePortRange(5), env: { ...process.env, REDIS_URL: redisUrl, QUEUE_PREFIX: `bench${Date.now()}`, LOG_LEVEL: 'warn' } });
  try {
    const client = new ConveyorClient(stack.urls['source-webhook'], stack.apiToken);
    await client.registerPipeline(`name: bench-true\nsource: { provider: generic, repository: "file://${repo}" }\nstages:\n  - { name: Build, type: build }\n  - { name: Test, type: test }\n  - { name: Package, type: build }\n  - { name: Verify, type: test }\n`);
    const script = join(home, 'steps.sh');
    await writeFile(script, BASH_STEPS);
    const conveyor: number[] = [];
    const bash: number[] = [];
    const lines: string[] = [];
    for (let i = 0; i <= rounds; i++) {
      const t0 = performance.now();
      const started = await client.request('POST', '/api/v1/pipelines/bench-true/runs', JSON.stringify({ commit }));
      const run = await pollUntilDone(client, started.json.runId);
      const ms = performance.now() - t0;
      if (run.status !== 'SUCCEEDED') throw new Error(`bench run ${run.id} ${run.status}: ${run.message}`);
      const work = await mkdtemp(join(home, 'bash-'));
      const b0 = performance.now();
      await runBash([script, repo, commit, work]);
      const bashMs = performance.now() - b0;
      await rm(work, { recursive: true, force: true });
      if (i === 0) continue; // warm-up: first clone, first tsx compile
      conveyor.push(ms);
      bash.push(bashMs);
      lines.push(`round ${i}: Conveyor ${ms.toFixed(0)} ms (${run.stages.map((s: any) => `${s.name} ${Date.parse(s.finishedAt) - Date.parse(s.startedAt)}`).join(', ')} ms) | bash ${bashMs.toFixed(1)} ms`);
    }
    return { lines, conveyorMs: median(conveyor), bashMs: median(bash), ratio: median(conveyor) / median(bash) };
  } finally {
    await stack.stop();
    await rm(home, { recursive: true, force: true });
  }
}
