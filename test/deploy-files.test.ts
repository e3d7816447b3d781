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
    const redisCommand = compose.services.redis.command.join(' ');
    // `$$`: compose's escape for a `$` the container's shell expands.
    for (const flag of ['--appendonly yes', '--maxmemory-policy noeviction', '--requirepass "$$REDISCLI_AUTH"']) expect(redisCommand).toContain(flag);
    expect(compose.services.redis.environment.REDISCLI_AUTH).toMatch(/^\$\{REDIS_PASSWORD:\?/);
    for (const name of SERVICES) {
      const svc = compose.services[name];
      expect(svc.build.args.SERVICE).toBe(name);
      // Redis wants a password; the services' temporary files (tsx's compiled code) are not in /tmp.
      expect(svc.environment.REDIS_URL).toMatch(/^redis:\/\/:\$\{REDIS_PASSWORD:\?[^}]*\}@redis:6379$/);
      expect(svc.environment.TMPDIR).toBe('/data/tmp');
      // Pipeline code runs as users of its own only under a root service, fenced off Redis with NET_ADMIN.
      if (['build', 'test-runner', 'deployer'].includes(name)) expect(svc).toMatchObject({ user: '0:0', cap_add: ['NET_ADMIN'] });
      else expect(svc.user).toBeUndefined();
      if (svc.environment.WORK_DIR) expect(svc.environment.WORK_DIR.startsWith('/tmp')).toBe(false);
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
    // The fence's firewall commands, and setpriv (util-linux) for the users of builds and versions.
    expect(dockerfile).toMatch(/apt-get install[^\n]*\butil-linux\b[^\n]*\biptables\b/);
  });
});
