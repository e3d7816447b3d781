import { pidAlive } from '@conveyor/procfs';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach } from 'vitest';
import { runPhases, type RunPhasesOptions } from './bash-session.js';
import { parseBuildspec } from './buildspec.js';

/** A fresh `<tmp>/ws` workspace per test; `dirs()` gives the current paths. */
export function useWorkspace(): () => { root: string; ws: string } {
  let root = '';
  beforeEach(async () => {
    root = await mkdtemp(join(tmpdir(), 'cv-runner-'));
    await mkdir(join(root, 'ws'));
  });
  afterEach(async () => {
    await rm(root, { recursive: true, force: true });
  });
  return () => ({ root, ws: join(root, 'ws') });
}

/** Runs a buildspec given as YAML in `ws`; returns the result, everything printed, and phase statuses by name. */
export async function runYaml(ws: string, yaml: string, opts: Partial<RunPhasesOptions> = {}) {
  let output = '';
  const result = await runPhases(parseBuildspec(yaml), {
    workspace: ws,
    env: {},
    onOutput: (c) => {
      output += c;
    },
    ...opts,
  });
  return { ...result, output, statuses: Object.fromEntries(result.phases.map((p) => [p.name, p.status])) };
}

/** Alive and not a zombie (a zombie has exited; only its parent has not collected it yet). */
export const isRunning = pidAlive;
