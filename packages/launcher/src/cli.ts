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
  // Signals are taken from here on, before the services start (a minute, at worst): Ctrl-C, a kill and a
  // closed terminal (SIGHUP) stop what was started, which runs in process groups of its own and so hears
  // none of them. A second one while stopping kills everything at once.
  const starting = new AbortController();
  let stack: Stack | undefined;
  /** What stops or kills the stack, from before its first service starts. */
  let handle: Pick<Stack, 'stop' | 'kill'> | undefined;
  let stopping: Promise<void> | undefined;
  const stop = () =>
    (stopping ??= handle
      ? handle.stop().then(
          () => void print('Conveyor: stopped.'),
          (err: unknown) => void print(`✖ ${(err as Error).message}`),
        )
      : Promise.resolve());
  // Whatever the stop did, the launcher then exits (a failed stop must not leave it running, or looping).
  const stopAndExit = (code: number) => void stop().finally(() => process.exit(code));
  let signals = 0;
  const onSignal = (code: number) => {
    signals += 1;
    if (signals === 1) {
      if (!stack) {
        print('Conveyor: stopping what has started… (press Ctrl-C again to kill it at once)');
        starting.abort(new Error('interrupted while starting'));
        return;
      }
      print('Conveyor: stopping… (press Ctrl-C again to kill everything at once)');
      return stopAndExit(code);
    }
    print('Conveyor: killing everything now');
    void (handle?.kill() ?? Promise.resolve()).catch(() => undefined).finally(() => process.exit(code));
  };
  process.on('SIGINT', () => onSignal(130));
  process.on('SIGTERM', () => onSignal(143));
  process.on('SIGHUP', () => onSignal(129));
  // A fault of the launcher's own stops what it started, too, instead of leaving it running unwatched:
  // while the services start, by ending the start (which stops them), after, by the stop.
  let crashes = 0;
  const crashed = (err: unknown) => {
    if (++crashes > 1) return; // one stop; what fails during it is said by it
    print(`✖ ${err instanceof Error ? err.stack : String(err)}`);
    if (!stack) starting.abort(err instanceof Error ? err : new Error(String(err)));
    else stopAndExit(1);
  };
  process.on('uncaughtException', crashed);
  process.on('unhandledRejection', crashed);
  try {
    stack = await startStack({ home, portBase, signal: starting.signal, onHandle: (h) => (handle = h), say: print });
  } catch (err) {
    const interrupted = starting.signal.aborted && signals > 0;
    print(`✖ ${interrupted ? 'interrupted while starting; what had started was stopped' : (err as Error).message}`);
    return interrupted ? 130 : 1;
  }
  const started = stack;
  superviseServices(started, {
    home,
    stopping: () => stopping !== undefined,
    giveUp: (why) => {
      print(`✖ ${why}; stopping everything`);
      stopAndExit(1);
    },
    say: print,
  });
  // The private Redis is not started again (the services would have lost what it held in its last second): its end ends the launcher.
  started.redis.process?.once('exit', (code, signal) => {
    if (stopping) return;
    print(`✖ the private redis-server ${signal ? `was killed by ${signal}` : `exited with code ${code}`} (see ${join(home, 'redis', 'redis.log')}); stopping everything`);
    stopAndExit(1);
  });

  print(`  Redis:          ${redactUrl(started.redis.url)} (${started.redis.origin})`);
  for (const [name, url] of Object.entries(started.urls)) print(`  ${name.padEnd(15)} ${url}`);
  print(`  API token:      ${started.apiTokenSource === 'CONVEYOR_API_TOKEN' ? 'the value of CONVEYOR_API_TOKEN' : `in ${started.apiTokenSource}`}`);
  // The services are the launcher's children, but a restart could leave a moment with none: stay up.
  setInterval(() => undefined, 1 << 30);
  if (command === 'serve') {
    print('Ready. Press Ctrl-C to stop.');
    return new Promise(() => undefined);
  }

  try {
    const client = new ConveyorClient(started.urls['source-webhook'], started.apiToken);
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
  } catch (err) {
    // Whatever failed (git, the API, the run's watch), what was started is not left running.
    print(`✖ ${(err as Error).message}`);
    await stop();
    return 1;
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
