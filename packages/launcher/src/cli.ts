#!/usr/bin/env -S node --import tsx
import { join } from 'node:path';
import { ConveyorClient } from './api-client.js';
import { examplePipelineYaml, prepareExampleRepo, watchRun } from './example.js';
import { redactUrl } from './redis.js';
import { REPO_ROOT, startStack, type Stack } from './stack.js';
import { superviseServices } from './supervise.js';

// The launcher is a terminal program: it talks to a person on stdout.
const print = (line: string) => process.stdout.write(`${line}\n`);

const USAGE = `usage: conveyor <command> [--once]
  run-example   start the services, register examples/hello-service, push it, watch the run
  serve         start the services only
  --once        (run-example) stop everything when the run ends; exit 0 only if it SUCCEEDED`;

async function main(argv: string[]): Promise<number> {
  const command = argv[0];
  if (command !== 'run-example' && command !== 'serve') {
    print(USAGE);
    return 2;
  }
  const once = argv.includes('--once');
  const home = process.env.CONVEYOR_HOME ?? join(REPO_ROOT, '.conveyor');
  const portBase = Number(process.env.CONVEYOR_PORT_BASE ?? 7001);
  if (!Number.isInteger(portBase) || portBase < 1 || portBase > 65_531) {
    print(`✖ CONVEYOR_PORT_BASE must be a port number (1–65531; the services take it and the next four), not ${process.env.CONVEYOR_PORT_BASE}`);
    return 2;
  }
  print(`Conveyor: starting services (data in ${home})`);
  let stack: Stack;
  try {
    stack = await startStack({ home, portBase });
  } catch (err) {
    print(`✖ ${(err as Error).message}`);
    return 1;
  }
  let stopping: Promise<void> | undefined;
  const stop = () => (stopping ??= stack.stop().then(() => void print('Conveyor: stopped.')));
  const stopAndExit = (code: number) => void stop().then(() => process.exit(code));
  // Ctrl-C, a kill, and a closed terminal (SIGHUP) all stop what was started: the services run in
  // process groups of their own, so nothing else would.
  process.once('SIGINT', () => stopAndExit(130));
  process.once('SIGTERM', () => stopAndExit(143));
  process.once('SIGHUP', () => stopAndExit(129));
  superviseServices(stack, {
    home,
    stopping: () => stopping !== undefined,
    giveUp: (why) => {
      print(`✖ ${why}; stopping everything`);
      stopAndExit(1);
    },
    say: print,
  });

  print(`  Redis:          ${redactUrl(stack.redis.url)} (${stack.redis.origin})`);
  for (const [name, url] of Object.entries(stack.urls)) print(`  ${name.padEnd(15)} ${url}`);
  print(`  API token:      ${stack.apiTokenSource === 'CONVEYOR_API_TOKEN' ? 'the value of CONVEYOR_API_TOKEN' : `in ${stack.apiTokenSource}`}`);
  // The services are the launcher's children, but a restart could leave a moment with none: stay up.
  setInterval(() => undefined, 1 << 30);
  if (command === 'serve') {
    print('Ready. Press Ctrl-C to stop.');
    return new Promise(() => undefined);
  }

  const client = new ConveyorClient(stack.urls['source-webhook'], stack.apiToken);
  const repo = await prepareExampleRepo(home);
  const { yaml, secret } = await examplePipelineYaml(home, repo.url);
  await client.registerPipeline(yaml);
  print(`Registered pipeline hello-service (repository ${repo.url})`);
  const push = await client.sendGithubPush({ secret, repository: repo.url, branch: 'main', before: repo.before, after: repo.commit });
  if (push.status !== 202) {
    print(`✖ the push webhook was not accepted: ${push.status} ${JSON.stringify(push.json)}`);
    await stop();
    return 1;
  }
  print(`Pushed ${repo.commit.slice(0, 12)} as a signed GitHub webhook → run ${push.json.runId}`);
  const run = await watchRun(client, push.json.runId, print);
  const url = run.stages.find((s: any) => s.type === 'deploy')?.result?.url;
  print(run.status === 'SUCCEEDED' ? `✔ Run ${run.id} SUCCEEDED — hello-service is serving at ${url}` : `✖ Run ${run.id} ${run.status}: ${run.message ?? ''}`);
  if (once) {
    await stop();
    return run.status === 'SUCCEEDED' ? 0 : 1;
  }
  print('Services and the deployment keep running. Press Ctrl-C to stop everything.');
  return new Promise(() => undefined);
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (err) => {
    print(`✖ ${err instanceof Error ? err.stack : String(err)}`);
    process.exit(1);
  },
);
