import { connect } from 'node:net';
import { Registry } from 'prom-client';
import { afterEach, describe, expect, it } from 'vitest';
import { buildBaseServer, type App } from './http.js';
import { createLogger } from './logger.js';

const apps: App[] = [];
function server(): App {
  const app = buildBaseServer({ logger: createLogger('t', 'silent'), registry: new Registry(), readiness: {} });
  apps.push(app);
  return app;
}
afterEach(async () => {
  await Promise.all(apps.splice(0).map((a) => a.close()));
});

const PROBLEM = 'application/problem+json';

describe('a 413 names the limit that refused the body', () => {
  it("a content-type parser's own limit, below the app's (a 256 KiB YAML parser)", async () => {
    const app = server();
    app.register(async (api) => {
      api.addContentTypeParser('application/yaml', { parseAs: 'string', bodyLimit: 256 * 1024 }, (_req, body, done) => done(null, body));
      api.post('/pipelines', async () => ({ ok: true }));
    }, { prefix: '/api/v1' });
    const res = await app.inject({ method: 'POST', url: '/api/v1/pipelines', headers: { 'content-type': 'application/yaml' }, payload: 'a: b\n'.repeat(54_000) });
    expect(res.statusCode).toBe(413);
    expect(res.headers['content-type']).toContain(PROBLEM);
    expect(res.json().detail).toMatch(/at most 262144 bytes/);
  });

  it("a raw parser's limit, above the app's (a webhook's)", async () => {
    const app = server();
    app.register(async (hooks) => {
      hooks.removeAllContentTypeParsers();
      hooks.addContentTypeParser('application/json', { parseAs: 'buffer', bodyLimit: 2 * 1024 * 1024 }, (_req, body, done) => done(null, body));
      hooks.post('/github', async (req) => ({ bytes: (req.body as Buffer).length }));
    }, { prefix: '/webhooks' });
    const post = (bytes: number) => app.inject({ method: 'POST', url: '/webhooks/github', headers: { 'content-type': 'application/json' }, payload: 'x'.repeat(bytes) });
    expect((await post(1_500_000)).json()).toEqual({ bytes: 1_500_000 });
    const res = await post(2_200_000);
    expect(res.statusCode).toBe(413);
    expect(res.json().detail).toMatch(/at most 2097152 bytes/);
  });

  it("a route's own bodyLimit, which wins over its parser's", async () => {
    const app = server();
    app.post('/small', { bodyLimit: 1000 }, async () => ({ ok: true }));
    const res = await app.inject({ method: 'POST', url: '/small', payload: { text: 'x'.repeat(2000) } });
    expect(res.statusCode).toBe(413);
    expect(res.json().detail).toMatch(/at most 1000 bytes/);
  });

  it("the app's limit, for the default JSON parser", async () => {
    const app = server();
    app.post('/things', async () => ({ ok: true }));
    const res = await app.inject({ method: 'POST', url: '/things', payload: { text: 'x'.repeat(1_100_000) } });
    expect(res.statusCode).toBe(413);
    expect(res.json().detail).toMatch(/at most 1048576 bytes/);
  });
});

describe("fastify's own URL errors are problem+json too, and do not echo the path", () => {
  it('414 for a path parameter over the length limit', async () => {
    const app = server();
    app.get('/runs/:runId', async () => ({ ok: true }));
    const res = await app.inject({ method: 'GET', url: `/runs/${'secretish'.repeat(20)}` });
    expect(res.statusCode).toBe(414);
    expect(res.headers['content-type']).toContain(PROBLEM);
    expect(res.json()).toMatchObject({ status: 414, title: 'URI Too Long', detail: expect.stringMatching(/longer than 100 characters/) });
    expect(res.body).not.toContain('secretish');
  });

  it('400 for a path that is not valid percent-encoding', async () => {
    const app = server();
    app.get('/runs/:runId', async () => ({ ok: true }));
    const res = await app.inject({ method: 'GET', url: '/runs/%E0%A4%Asecretish' });
    expect(res.statusCode).toBe(400);
    expect(res.headers['content-type']).toContain(PROBLEM);
    expect(res.json()).toMatchObject({ status: 400, title: 'Bad Request', detail: expect.stringMatching(/percent-encoding/) });
    expect(res.body).not.toContain('secretish');
  });
});

/** Sends `request` as raw bytes to a listening app and returns the raw response. */
async function rawExchange(app: App, request: string): Promise<string> {
  await app.listen({ host: '127.0.0.1', port: 0 });
  const { port } = app.server.address() as { port: number };
  return new Promise((resolve, reject) => {
    const socket = connect(port, '127.0.0.1', () => socket.end(request));
    let response = '';
    socket.on('data', (d) => (response += d.toString()));
    socket.on('close', () => resolve(response));
    socket.on('error', reject);
  });
}

describe('HTTP the server cannot parse is answered with problem+json', () => {
  it('400 for a malformed request', async () => {
    const response = await rawExchange(server(), 'NOT HTTP AT ALL\r\n\r\n');
    expect(response).toMatch(/^HTTP\/1\.1 400 /);
    expect(response.toLowerCase()).toContain(`content-type: ${PROBLEM}`);
    expect(response).toContain('"status":400');
  });

  it('431 for headers over the size limit', async () => {
    const response = await rawExchange(server(), `GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ${'a'.repeat(20_000)}\r\n\r\n`);
    expect(response).toMatch(/^HTTP\/1\.1 431 /);
    expect(response.toLowerCase()).toContain(`content-type: ${PROBLEM}`);
    expect(response).toContain('"status":431');
  });
});

describe('timeouts: a connection idle while its request arrives is closed, not one whose answer takes its time', () => {
  it('closes a connection that sends nothing, and answers a request whose handler is slower than the idle limit', async () => {
    const app = buildBaseServer({ logger: createLogger('t', 'silent'), registry: new Registry(), readiness: {}, idleTimeoutMs: 300 });
    apps.push(app);
    app.get('/slow', async () => {
      await new Promise((r) => setTimeout(r, 900));
      return { done: true };
    });
    await app.listen({ port: 0, host: '127.0.0.1' });
    const { port } = app.server.address() as { port: number };
    // Slower than the idle limit to answer: answered whole all the same.
    const res = await fetch(`http://127.0.0.1:${port}/slow`);
    expect(await res.json()).toEqual({ done: true });
    // Silent: closed.
    const silent = connect(port, '127.0.0.1');
    silent.on('error', () => undefined);
    silent.write('GET /slow HTTP/1.1\r\nhost: x\r\n'); // headers never finished
    await new Promise((resolve) => silent.on('close', resolve));
    expect(silent.destroyed).toBe(true);
  });
});
