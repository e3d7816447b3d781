import { spawn, type ChildProcess } from 'node:child_process';
import { afterEach, describe, expect, it } from 'vitest';
import type { ServiceName } from './stack.js';
import { readyOrStopped, waitReady } from './stack.js';
import { RESTARTS_PER_MINUTE, superviseServices } from './supervise.js';

const started: ChildProcess[] = [];
afterEach(() => {
  for (const child of started.splice(0)) if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
});

function run(script: string): ChildProcess {
  const child = spawn('bash', ['-c', script], { stdio: 'ignore' });
  started.push(child);
  return child;
}

/** Until the child has ended and Node has emitted its 'exit' (to nobody, if nobody listened yet). */
function ended(child: ChildProcess): Promise<void> {
  return new Promise((resolve) => child.once('exit', () => resolve()));
}

function until(check: () => boolean): Promise<void> {
  return new Promise((resolve) => {
    const poll = setInterval(() => {
      if (check()) {
        clearInterval(poll);
        resolve();
      }
    }, 10);
  });
}

describe('superviseServices', () => {
  it('restarts a service that ended before it was watched (its exit event already gone)', async () => {
    const build = run('exit 7');
    await ended(build);
    const monitor = run('sleep 30');
    const lines: string[] = [];
    const restarted: ServiceName[] = [];
    const again = run('sleep 30');
    superviseServices(
      {
        processes: new Map<ServiceName, ChildProcess>([
          ['build', build],
          ['monitor', monitor],
        ]),
        startService: async (name) => {
          restarted.push(name);
          return again;
        },
      },
      { home: '/conveyor-home', stopping: () => false, giveUp: (why) => lines.push(`gave up: ${why}`), say: (line) => lines.push(line) },
    );
    await until(() => lines.length >= 2);
    expect(restarted).toEqual(['build']);
    expect(lines).toEqual(['✖ build exited with code 7; starting it again (see /conveyor-home/logs/build.log)', '✔ build is running again']);
  });

  it('a service killed again while it was being started is started again, not given up on', async () => {
    const lines: string[] = [];
    let gaveUp: string | undefined;
    let starts = 0;
    const again = run('sleep 30');
    superviseServices(
      {
        processes: new Map<ServiceName, ChildProcess>([['monitor', run('exit 1')]]),
        startService: async () => {
          starts += 1;
          if (starts === 1) throw new Error('monitor was killed by SIGKILL before it was ready; see /h/logs/monitor.log');
          return again;
        },
      },
      { home: '/h', stopping: () => false, giveUp: (why) => (gaveUp = why), say: (line) => lines.push(line) },
    );
    await until(() => lines.includes('✔ monitor is running again'));
    expect(starts).toBe(2);
    expect(gaveUp).toBeUndefined();
    expect(lines[1]).toBe('✖ monitor could not be started again (monitor was killed by SIGKILL before it was ready; see /h/logs/monitor.log); starting it again (see /h/logs/monitor.log)');
  });

  it('waiting for a service to be ready ends at once when it is killed by a signal', async () => {
    const child = run('kill -KILL $$');
    await until(() => child.signalCode !== null);
    // Were the signal missed, it would poll /readyz for 60 s: far past this test's timeout.
    await expect(waitReady('http://127.0.0.1:1', child, 'build', '/nonexistent/build.log')).rejects.toThrow('build was killed by SIGKILL before it was ready; see /nonexistent/build.log');
  });

  it('a start that never becomes ready is stopped before its error is passed on', async () => {
    const child = run('sleep 100');
    await expect(readyOrStopped(child, Promise.reject(new Error('build not ready after 60 s')), 5000)).rejects.toThrow('build not ready after 60 s');
    // Stopped by then, not left running unwatched.
    expect(child.signalCode).toBe('SIGTERM');
  });

  it('a never-ready start that ignores SIGTERM is killed after the grace time', async () => {
    // The trap is set before the sleep starts; the sleep is waited for in pieces so bash sees the signal.
    const child = spawn('bash', ['-c', 'trap "" TERM; echo armed; while :; do sleep 0.05; done'], { stdio: ['ignore', 'pipe', 'ignore'] });
    started.push(child);
    await new Promise((resolve) => child.stdout!.once('data', resolve));
    await expect(readyOrStopped(child, Promise.reject(new Error('never ready')), 200)).rejects.toThrow('never ready');
    expect(child.signalCode).toBe('SIGKILL');
  });

  it('a start that becomes ready is left running', async () => {
    const child = run('sleep 100');
    await readyOrStopped(child, Promise.resolve(), 200);
    expect(child.killed).toBe(false); // no signal was sent
    expect(child.exitCode).toBeNull();
    expect(child.signalCode).toBeNull();
  });

  it('gives up on a service that keeps ending, and says nothing while the launcher stops', async () => {
    const lines: string[] = [];
    let gaveUp: string | undefined;
    superviseServices(
      { processes: new Map<ServiceName, ChildProcess>([['deployer', run('exit 1')]]), startService: async () => run('exit 1') },
      { home: '/h', stopping: () => false, giveUp: (why) => (gaveUp = why), say: (line) => lines.push(line) },
    );
    await until(() => gaveUp !== undefined);
    expect(gaveUp).toBe(`deployer exited with code 1, ${RESTARTS_PER_MINUTE} times in a minute (see /h/logs/deployer.log)`);
    expect(lines.filter((l) => l.startsWith('✖ deployer exited with code 1'))).toHaveLength(RESTARTS_PER_MINUTE - 1);

    const quiet: string[] = [];
    const child = run('kill -TERM $$');
    superviseServices(
      { processes: new Map<ServiceName, ChildProcess>([['build', child]]), startService: async () => run('exit 0') },
      { home: '/h', stopping: () => true, giveUp: (why) => quiet.push(why), say: (line) => quiet.push(line) },
    );
    await until(() => child.signalCode !== null);
    await new Promise((r) => setTimeout(r, 50));
    expect(child.signalCode).toBe('SIGTERM');
    expect(quiet).toEqual([]);
  });
});
