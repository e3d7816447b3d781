import { readdir, readFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { pidAlive } from '@conveyor/procfs';
import { startServiceProcess, type RunningService } from '@conveyor/testing';

export { getJson, type RunningService } from '@conveyor/testing';

const APP_DIR = fileURLToPath(new URL('..', import.meta.url));

/** This app's real entry point, as a child process. */
export const startService = (env: Record<string, string>): Promise<RunningService> => startServiceProcess(APP_DIR, env);

/** Living (non-zombie) processes whose environment holds `entry` (Linux /proc). */
export async function processesWithEnv(entry: string): Promise<number[]> {
  const pids: number[] = [];
  for (const name of await readdir('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const [environ, stat] = await Promise.all([readFile(`/proc/${name}/environ`, 'latin1'), readFile(`/proc/${name}/stat`, 'utf8')]);
      const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
      if (state !== 'Z' && environ.split('\0').includes(entry)) pids.push(Number(name));
    } catch {
      // gone, or not ours
    }
  }
  return pids;
}

/** Alive and not a zombie. */
export const alive = async (pid: number): Promise<boolean> => pidAlive(pid);

