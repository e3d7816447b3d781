import { Registry } from 'prom-client';
import { afterEach, describe, expect, it } from 'vitest';
import { buildBaseServer, createLogger, type App } from '@conveyor/service-kit';
import type { HistoryEntry } from '../domain/history.js';
import { historyRoutes } from './server.js';

const TOKEN = 'a-token-of-enough-length';
const entries: HistoryEntry[] = [
  { runId: 'run-00000002', pipeline: 'shop', status: 'FAILED', durationMs: 10, finishedAt: '2025-01-01T00:00:02.000Z' },
  { runId: 'run-00000001', pipeline: 'blog', status: 'SUCCEEDED', durationMs: 20, finishedAt: '2025-01-01T00:00:01.000Z' },
];
const queries: unknown[] = [];
const apps: App[] = [];

function server(apiToken?: string) {
  const app = buildBaseServer({ logger: createLogger('monitor-test', 'silent'), registry: new Registry(), readiness: {} });
  historyRoutes({
    history: {
      record: async () => {},
      recent: async (q) => {
        queries.push(q);
        return entries.filter((e) => !q.pipeline || e.pipeline === q.pipeline).slice(0, q.limit);
      },
    },
    apiToken,
  })(app);
  apps.push(app);
  return app;
}
afterEach(async () => {
  queries.length = 0;
  await Promise.all(apps.splice(0).map((a) => a.close()));
});

describe('GET /api/v1/history', () => {
  it('returns recent runs, 50 by default', async () => {
    const res = await server().inject({ method: 'GET', url: '/api/v1/history' });
    expect(res.statusCode).toBe(200);
    expect(res.json()).toEqual({ runs: entries });
    expect(queries).toEqual([{ pipeline: undefined, limit: 50 }]);
  });

  it('filters by pipeline and limits', async () => {
    const res = await server().inject({ method: 'GET', url: '/api/v1/history?pipeline=shop&limit=1' });
    expect(res.json()).toEqual({ runs: [entries[0]] });
  });

  it('rejects bad queries with problem details', async () => {
    for (const url of ['/api/v1/history?limit=0', '/api/v1/history?limit=5000', '/api/v1/history?pipeline=Not_Valid', '/api/v1/history?limit=abc']) {
      const res = await server().inject({ method: 'GET', url });
      expect(res.statusCode, url).toBe(400);
      expect(res.headers['content-type']).toContain('application/problem+json');
    }
  });

  it('requires the bearer token when one is configured', async () => {
    const app = server(TOKEN);
    expect((await app.inject({ method: 'GET', url: '/api/v1/history' })).statusCode).toBe(401);
    expect((await app.inject({ method: 'GET', url: '/api/v1/history', headers: { authorization: 'Bearer wrong-token-of-enough-len' } })).statusCode).toBe(401);
    const ok = await app.inject({ method: 'GET', url: '/api/v1/history', headers: { authorization: `Bearer ${TOKEN}` } });
    expect(ok.statusCode).toBe(200);
    expect((await app.inject({ method: 'GET', url: '/metrics' })).statusCode).toBe(200);
  });
});
