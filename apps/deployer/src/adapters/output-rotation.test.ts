import { spawn, type ChildProcess } from 'node:child_process';
import { mkdir, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { OUTPUT_FILE } from '../domain/deployment-record.js';
import { DeploymentFiles } from './deployment-files.js';
import { rotateOutputLogs } from './output-rotation.js';

let root: string;
let writer: ChildProcess | undefined;
beforeEach(async () => {
  root = await mkdtemp(join(tmpdir(), 'cv-rotate-'));
});
afterEach(async () => {
  writer?.kill('SIGKILL');
  writer = undefined;
  await rm(root, { recursive: true, force: true });
});

describe('rotateOutputLogs', () => {
  it('copies a log past its limit to .1 and empties it, while the command goes on appending to it', async () => {
    const files = new DeploymentFiles(root);
    const dir = join(root, 'shop', 'run-abc-1');
    await mkdir(dir, { recursive: true });
    const log = join(dir, OUTPUT_FILE);
    await writeFile(log, 'x'.repeat(5000) + '\n');
    // A deployed command as the deployer starts it: its output appended to the log through its own fd.
    writer = spawn('bash', ['-c', `exec >>"${log}" 2>&1; i=0; while true; do i=$((i+1)); echo "line $i"; sleep 0.02; done`], { stdio: 'ignore' });
    await new Promise((r) => setTimeout(r, 200));
    const small = join(root, 'blog', 'run-def-1');
    await mkdir(small, { recursive: true });
    await writeFile(join(small, OUTPUT_FILE), 'short\n');

    expect(await rotateOutputLogs(files, 1000)).toEqual([log]);
    const kept = await readFile(`${log}.1`, 'utf8');
    expect(kept.startsWith('x'.repeat(5000))).toBe(true);
    expect(kept).toContain('line 1\n');
    await new Promise((r) => setTimeout(r, 200));
    const now = await readFile(log, 'utf8');
    // Appended at the new end: no hole of zero bytes where the old content was, and the count goes on.
    expect(now.length).toBeGreaterThan(0);
    expect(now.length).toBeLessThan(1000);
    expect(now).not.toContain('\0');
    expect(now).toMatch(/^line \d+\n/);
    expect(await readFile(join(small, OUTPUT_FILE), 'utf8')).toBe('short\n');
    expect(await rotateOutputLogs(files, 1000)).toEqual([]);
    expect((await stat(`${log}.1`)).size).toBe(Buffer.byteLength(kept));
  });
});
