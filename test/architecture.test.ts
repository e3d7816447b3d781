import { readdir, readFile } from 'node:fs/promises';
import { dirname, join, relative, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';

/**
 * The design rules a linter would check, checked here so they cannot silently rot:
 * domain folders import no infrastructure, services share nothing but packages, no console in services.
 */
const ROOT = join(import.meta.dirname, '..');
const FORBIDDEN_IN_DOMAIN = /from '(bullmq|fastify|ioredis|@aws-sdk\/[^']*|@kubernetes\/[^']*|node:child_process|node:fs[^']*|node:net|node:http)'/;

async function sourceFiles(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const entry of await readdir(dir, { withFileTypes: true }).catch(() => [])) {
    if (entry.name === 'node_modules') continue;
    const path = join(dir, entry.name);
    if (entry.isDirectory()) out.push(...(await sourceFiles(path)));
    else if (entry.name.endsWith('.ts')) out.push(path);
  }
  return out;
}

const appsAndPackages = async () => [...(await sourceFiles(join(ROOT, 'apps'))), ...(await sourceFiles(join(ROOT, 'packages')))];

describe('architecture rules', () => {
  it('domain folders import no infrastructure (bullmq, fastify, ioredis, AWS, Kubernetes, processes, files, sockets)', async () => {
    const files = (await appsAndPackages()).filter((f) => f.includes('/src/domain/'));
    expect(files.length).toBeGreaterThan(5);
    const offenders: string[] = [];
    for (const f of files) {
      const text = await readFile(f, 'utf8');
      const m = FORBIDDEN_IN_DOMAIN.exec(text);
      if (m) offenders.push(`${relative(ROOT, f)} imports ${m[1]}`);
    }
    expect(offenders).toEqual([]);
  });

  it('a service imports another service only through packages (contracts are the only shared knowledge)', async () => {
    const offenders: string[] = [];
    for (const f of await sourceFiles(join(ROOT, 'apps'))) {
      const app = relative(join(ROOT, 'apps'), f).split('/')[0]!;
      const text = await readFile(f, 'utf8');
      for (const m of text.matchAll(/from '@conveyor\/(source-webhook|build|test-runner|deployer|monitor)'/g)) {
        if (m[1] !== app) offenders.push(`${relative(ROOT, f)} imports @conveyor/${m[1]}`);
      }
      for (const m of text.matchAll(/from '(\.{1,2}\/[^']+)'/g)) {
        const target = relative(join(ROOT, 'apps'), resolve(dirname(f), m[1]!));
        if (!target.startsWith('..') && target.split('/')[0] !== app) offenders.push(`${relative(ROOT, f)} reaches into another app by path (${m[1]})`);
      }
    }
    expect(offenders).toEqual([]);
  });

  it('services log through pino, never console.*', async () => {
    const files = (await sourceFiles(join(ROOT, 'apps'))).filter((f) => !f.endsWith('.test.ts') && f.includes('/src/'));
    const offenders: string[] = [];
    for (const f of files) if (/\bconsole\.(log|error|warn|info|debug)\(/.test(await readFile(f, 'utf8'))) offenders.push(relative(ROOT, f));
    expect(offenders).toEqual([]);
  });
});
