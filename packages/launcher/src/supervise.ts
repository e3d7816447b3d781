import type { ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import type { ServiceName, Stack } from './stack.js';

export const RESTARTS_PER_MINUTE = 5;

/**
 * A service that exits while the launcher runs is said so and started again (its work is not lost:
 * the queues and the reconciler pick it up); a start that fails (killed again while starting, say)
 * counts as another end. One that ends RESTARTS_PER_MINUTE times in a minute ends the launcher through
 * `giveUp`.
 */
export function superviseServices(
  stack: Pick<Stack, 'processes' | 'startService'>,
  { home, stopping, giveUp, say }: { home: string; stopping: () => boolean; giveUp: (why: string) => void; say: (line: string) => void },
): void {
  const exits = new Map<ServiceName, number[]>();
  /** Counts an end (an exit, or a start that failed) and starts the service again, unless it ends too often. */
  const ended = (name: ServiceName, how: string) => {
    if (stopping()) return;
    const log = join(home, 'logs', `${name}.log`);
    const recent = (exits.get(name) ?? []).filter((t) => Date.now() - t < 60_000);
    recent.push(Date.now());
    exits.set(name, recent);
    if (recent.length >= RESTARTS_PER_MINUTE) return giveUp(`${name} ${how}, ${recent.length} times in a minute (see ${log})`);
    say(`✖ ${name} ${how}; starting it again (see ${log})`);
    stack.startService(name).then(
      (again) => {
        if (stopping()) return;
        say(`✔ ${name} is running again`);
        watch(name, again);
      },
      // Killed again while it started, or it cannot start: counted like any other end.
      (err: Error) => ended(name, `could not be started again (${err.message})`),
    );
  };
  const watch = (name: ServiceName, child: ChildProcess) => {
    const exited = (code: number | null, signal: NodeJS.Signals | null) => ended(name, signal ? `killed by ${signal}` : `exited with code ${code}`);
    // One that ended before it was watched (while the services after it started) emitted its 'exit' to nobody.
    if (child.exitCode !== null || child.signalCode !== null) exited(child.exitCode, child.signalCode);
    else child.once('exit', exited);
  };
  for (const [name, child] of stack.processes) watch(name, child);
}
