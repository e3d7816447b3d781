import { mkdir, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';

/** Writes each file (path under `dir` → content), making the directories it needs. */
export async function writeFiles(dir: string, files: Record<string, string>): Promise<void> {
  for (const [path, content] of Object.entries(files)) {
    await mkdir(dirname(join(dir, path)), { recursive: true });
    await writeFile(join(dir, path), content);
  }
}

/**
 * A glob that backtracks catastrophically in picomatch's regex against `GLOB_VICTIM` (about 30 s
 * unbounded): what the time-limited glob matchers must stop.
 */
export const CATASTROPHIC_GLOB = `${'*a'.repeat(9)}*b`;
export const GLOB_VICTIM = 'a'.repeat(45);
