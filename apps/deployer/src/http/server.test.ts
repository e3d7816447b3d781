import { Registry } from 'prom-client';
import { afterEach, describe, expect, it } from 'vitest';
import { buildBaseServer, createLogger, type App } from '@conveyor/service-kit';
import type { DeploymentView } from '../ports.js';
import { deploymentRoutes } from './server.js';

const deployment: DeploymentView = {
  pipeline: 'shop',
  runId: 'run-00000001',
  attempt: 1,
  pid: 1234,
  pgid: 1234,
  port: 4100,
  url: 'http://127.0.0.1:4100',
  commit: 'abc',
  startedAt: '2025-01-01T00:00:00.000Z',
  running: true,
};

const TOKEN = 'a-token-of-enough-length';
const apps: App[] = [];
function server(apiToken?: string, ready = true) {
  const app = buildBaseServer({
    logger: createLogger('deployer-test', 'silent'),
    registry: new Registry(),
    readiness: { redis: () => { if (!ready) throw new Error('redis down'); } },
  });
  deploymentRoutes({ catalog: { list: async () => [deployment] }, apiToken })(app);
  apps.push(app);
  return app;
}
afterEach(async () => {
  await Promise.all(apps.splice(0).map((a) => a.close()));
});

describe('deployer HTTP', () => {
  it('lists deployments without auth when no token is configured', async () => {
    const res = await server().inject({ method: 'GET', url: '/api/v1/deployments' });
    expect(res.statusCode).toBe(200);
    expect(res.json()).toEqual({ deployments: [deployment] });
  });

  it('requires the bearer token when one is configured', async () => {
    const app = server(TOKEN);
    const none = await app.inject({ method: 'GET', url: '/api/v1/deployments' });
    expect(none.statusCode).toBe(401);
    expect(none.headers['www-authenticate']).toBe('Bearer');
    expect(none.headers['content-type']).toContain('application/problem+json');
    const wrong = await app.inject({ method: 'GET', url: '/api/v1/deployments', headers: { authorization: `Bearer ${TOKEN}x` } });
    expect(wrong.statusCode).toBe(401);
    const basic = await app.inject({ method: 'GET', url: '/api/v1/deployments', headers: { authorization: `Basic ${TOKEN}` } });
    expect(basic.statusCode).toBe(401);
    const ok = await app.inject({ method: 'GET', url: '/api/v1/deployments', headers: { authorization: `Bearer ${TOKEN}` } });
    expect(ok.statusCode).toBe(200);
    expect(ok.json().deployments[0].url).toBe('http://127.0.0.1:4100');
  });

  it('leaves health, readiness and metrics open', async () => {
    const app = server(TOKEN);
    expect((await app.inject({ method: 'GET', url: '/healthz' })).statusCode).toBe(200);
    expect((await app.inject({ method: 'GET', url: '/readyz' })).statusCode).toBe(200);
    expect((await app.inject({ method: 'GET', url: '/metrics' })).statusCode).toBe(200);
  });

  it('is not ready when a dependency is down', async () => {
    const res = await server(undefined, false).inject({ method: 'GET', url: '/readyz' });
    expect(res.statusCode).toBe(503);
    expect(res.json().checks.redis).toBe('redis down');
  });
});
