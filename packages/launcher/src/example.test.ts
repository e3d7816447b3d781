import { execFile } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import type { ConveyorClient } from './api-client.js';
import { watchRun } from './example.js';

const exec = promisify(execFile);

/** A client whose getRun answers from a script: an Error is thrown, anything else returned. */
function scripted(answers: unknown[]): { client: ConveyorClient; calls: () => number } {
  let calls = 0;
  const client = {
    getRun: async () => {
      const answer = answers[Math.min(calls++, answers.length - 1)];
      if (answer instanceof Error) throw answer;
      return answer;
    },
  } as unknown as ConveyorClient;
  return { client, calls: () => calls };
}

const run = (status: string) => ({ id: 'run-1', status, stages: [{ name: 'Build', status: status === 'RUNNING' ? 'RUNNING' : status }] });

describe('watchRun', () => {
  it('rides out the API going away for a while (a restarted control plane), printing on', async () => {
    const refused = Object.assign(new TypeError('fetch failed'), {});
    const unavailable = Object.assign(new Error('GET run run-1: 503 …'), { status: 503 });
    const { client, calls } = scripted([run('RUNNING'), refused, unavailable, run('SUCCEEDED')]);
    const lines: string[] = [];
    const final = await watchRun(client, 'run-1', (l) => lines.push(l), 60_000, 10_000);
    expect(final.status).toBe('SUCCEEDED');
    expect(calls()).toBe(4);
    expect(lines.some((l) => l.includes('Build') && l.includes('SUCCEEDED'))).toBe(true);
  });

  it('gives up after the outage lasts past its limit, saying so, and at once on a 4xx', async () => {
    const { client } = scripted([new TypeError('fetch failed')]);
    await expect(watchRun(client, 'run-1', () => undefined, 60_000, 1200)).rejects.toThrow('the API has not answered for 1.2 s (fetch failed)');
    const notFound = scripted([Object.assign(new Error('GET run run-1: 404 not found'), { status: 404 })]);
    await expect(watchRun(notFound.client, 'run-1', () => undefined)).rejects.toThrow('404');
    expect(notFound.calls()).toBe(1);
  });
});

describe('prepareExampleRepo', () => {
  it("commits the example whatever the person's git settings say (a global commit.gpgsign would wait for a key)", async () => {
    const dir = await mkdtemp(join(tmpdir(), 'cv-example-'));
    try {
      const home = join(dir, 'user');
      await exec('mkdir', ['-p', home]);
      await writeFile(join(home, '.gitconfig'), '[commit]\n\tgpgsign = true\n[gpg]\n\tprogram = /bin/false\n');
      const script = `const m = await import(${JSON.stringify(join(import.meta.dirname, 'example.ts'))}); const r = await m.prepareExampleRepo(${JSON.stringify(join(dir, 'conveyor'))}); console.log(r.commit);`;
      const { stdout } = await exec(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], { env: { PATH: process.env.PATH, HOME: home }, cwd: join(import.meta.dirname, '..') });
      expect(stdout.trim()).toMatch(/^[0-9a-f]{40}$/);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  }, 60_000);
});
