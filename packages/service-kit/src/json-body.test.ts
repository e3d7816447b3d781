import { Registry } from 'prom-client';
import { afterEach, describe, expect, it } from 'vitest';
import { buildBaseServer, type App } from './http.js';
import { parseJsonBody } from './json-body.js';
import { createLogger } from './logger.js';

const apps: App[] = [];
/** An API context that parses JSON as source-webhook's /api/v1 does, with parseJsonBody in place of fastify's. */
function server(): App {
  const app = buildBaseServer({ logger: createLogger('t', 'silent'), registry: new Registry(), readiness: {} });
  app.register(async (api) => {
    api.addContentTypeParser('application/json', { parseAs: 'string' }, parseJsonBody);
    api.post('/things', async (req) => ({ got: req.body }));
  }, { prefix: '/api/v1' });
  apps.push(app);
  return app;
}
afterEach(async () => {
  await Promise.all(apps.splice(0).map((a) => a.close()));
});

const post = (payload: string) => server().inject({ method: 'POST', url: '/api/v1/things', headers: { 'content-type': 'application/json' }, payload });

describe('parseJsonBody', () => {
  it('parses a JSON body', async () => {
    const res = await post('{"name":"shop","stages":[{"name":"Build"}]}');
    expect(res.statusCode).toBe(200);
    expect(res.json()).toEqual({ got: { name: 'shop', stages: [{ name: 'Build' }] } });
  });

  it('refuses a __proto__ key as a key that is not allowed, naming where it is in body', async () => {
    const res = await post('{"name":"shop","stages":[{"__proto__":{"admin":true}}]}');
    expect(res.statusCode).toBe(400);
    expect(res.headers['content-type']).toContain('application/problem+json');
    expect(res.json()).toMatchObject({
      status: 400,
      detail: 'body.stages.0.__proto__: key __proto__ is not allowed',
      errors: [{ path: 'body.stages.0.__proto__', message: 'key __proto__ is not allowed' }],
    });
  });

  it('refuses __proto__ written with escapes, and constructor.prototype', async () => {
    expect((await post('{"\\u005f_proto__":{}}')).json().detail).toBe('body.__proto__: key __proto__ is not allowed');
    expect((await post('{"a":{"constructor":{"prototype":{"x":1}}}}')).json().detail).toBe('body.a.constructor.prototype: key constructor.prototype is not allowed');
    // A constructor key alone is data, as fastify's parser has it.
    expect((await post('{"constructor":"x"}')).json()).toEqual({ got: { constructor: 'x' } });
  });

  it('says a body that is not JSON is not valid JSON, and where', async () => {
    const res = await post('{"name": }');
    expect(res.statusCode).toBe(400);
    expect(res.json().detail).toMatch(/^body is not valid JSON/);
    expect(res.json().errors).toEqual([{ path: 'body', message: 'not valid JSON' }]);
  });
});
