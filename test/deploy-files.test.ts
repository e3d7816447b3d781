import { readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { parse } from 'yaml';
import { describe, expect, it } from 'vitest';

/** No Docker engine runs here: check what can be checked without one — the files agree with the code. */
const ROOT = join(import.meta.dirname, '..');
const SERVICES = ['source-webhook', 'build', 'test-runner', 'deployer', 'monitor'];

describe('docker-compose.yml and Dockerfile', () => {
  it('define Redis and the five services, each built from an app that exists, on one Redis', async () => {
    const compose = parse(await readFile(join(ROOT, 'docker-compose.yml'), 'utf8'), { merge: true });
    expect(Object.keys(compose.services).sort()).toEqual(['redis', ...SERVICES].sort());
    expect(compose.services.redis.command).toEqual(expect.arrayContaining(['--appendonly', 'yes', '--maxmemory-policy', 'noeviction']));
    for (const name of SERVICES) {
      const svc = compose.services[name];
      expect(svc.build.args.SERVICE).toBe(name);
      expect(svc.environment.REDIS_URL).toBe('redis://redis:6379');
      // The API token reaches only the services that check it: builds and tests never see it.
      if (['build', 'test-runner'].includes(name)) expect(svc.environment).not.toHaveProperty('CONVEYOR_API_TOKEN');
      else expect(svc.environment.CONVEYOR_API_TOKEN).toMatch(/^\$\{CONVEYOR_API_TOKEN:\?/);
      expect((await stat(join(ROOT, 'apps', name, 'src', 'main.ts'))).isFile()).toBe(true);
    }
    const ports = SERVICES.map((n) => Number(compose.services[n].environment.PORT));
    expect(ports).toEqual([7001, 7002, 7003, 7004, 7005]);
  });

  it('the Dockerfile starts the service named by its build argument', async () => {
    const dockerfile = await readFile(join(ROOT, 'Dockerfile'), 'utf8');
    expect(dockerfile).toMatch(/^ARG SERVICE$/m);
    expect(dockerfile).toContain('apps/${SERVICE}/src/main.ts');
    expect(dockerfile).toContain('pnpm@12.4.2');
  });
});
