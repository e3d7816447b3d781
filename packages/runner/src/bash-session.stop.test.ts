import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import type { RunPhasesOptions } from './bash-session.js';
import { isRunning, runYaml, useWorkspace } from './bash-session.testkit.js';

const dirs = useWorkspace();
const run = (yaml: string, opts: Partial<RunPhasesOptions> = {}) => runYaml(dirs().ws, yaml, opts);

describe('runPhases: timeouts and stops', () => {
  it('kills the whole process group on timeout, children included', async () => {
    const started = Date.now();
    const r = await run(`version: 0.2
phases:
  build:
    commands:
      - sleep 100 & echo $! > bg.pid
      - sh -c 'echo $$ > child.pid; sleep 100'
  post_build:
    commands: [echo post]
`, { timeoutMs: 1000, killGraceMs: 500 });
    expect(r.status).toBe('TIMED_OUT');
    expect(Date.now() - started).toBeLessThan(5000);
    expect(r.statuses).toEqual({ build: 'FAILED', post_build: 'SKIPPED' });
    expect(r.message).toMatch(/timed out after 1000 ms/);
    for (const file of ['bg.pid', 'child.pid']) {
      const pid = Number((await readFile(join(dirs().ws, file), 'utf8')).trim());
      expect(pid).toBeGreaterThan(1);
      expect(isRunning(pid)).toBe(false);
    }
  });

  it('SIGKILLs what ignores SIGTERM once the grace period ends', async () => {
    const r = await run("version: 0.2\nphases:\n  build:\n    commands:\n      - trap '' TERM; sh -c 'trap \"\" TERM; echo $$ > stubborn.pid; sleep 100'\n", { timeoutMs: 500, killGraceMs: 300 });
    expect(r.status).toBe('TIMED_OUT');
    expect(isRunning(Number(await readFile(join(dirs().ws, 'stubborn.pid'), 'utf8')))).toBe(false);
  });

  it('stops on abort and reports STOPPED', async () => {
    const controller = new AbortController();
    setTimeout(() => controller.abort(), 300);
    const r = await run('version: 0.2\nphases:\n  build:\n    commands: [sleep 100]\n', { signal: controller.signal });
    expect(r.status).toBe('STOPPED');
    expect(r.statuses).toEqual({ build: 'FAILED' });
  });

  it('does not start when the signal is already aborted', async () => {
    const r = await run('version: 0.2\nphases:\n  build:\n    commands: [touch ran]\n', { signal: AbortSignal.abort() });
    expect(r.status).toBe('STOPPED');
    expect(existsSync(join(dirs().ws, 'ran'))).toBe(false);
  });

  it('kills background processes left running when the build ends', async () => {
    const r = await run('version: 0.2\nphases:\n  build:\n    commands:\n      - sleep 100 & echo $! > bg.pid\n', { killGraceMs: 500 });
    expect(r.status).toBe('SUCCEEDED');
    expect(isRunning(Number(await readFile(join(dirs().ws, 'bg.pid'), 'utf8')))).toBe(false);
  });
});
