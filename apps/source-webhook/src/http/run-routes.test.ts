import { PassThrough } from 'node:stream';
import { afterEach, describe, expect, it } from 'vitest';
import { artifactKey, type ArtifactReader } from '@conveyor/artifacts';
import { buildBaseServer, createLogger, createRegistry, type App } from '@conveyor/service-kit';
import { runRoutes } from './run-routes.js';
import type { ServerDeps } from './server.js';

const RUN_ID = 'run-0001-aaaa';
let app: App | undefined;
const aborts: AbortController[] = [];
const bodies: PassThrough[] = [];
afterEach(async () => {
  for (const a of aborts.splice(0)) a.abort();
  for (const b of bodies.splice(0)) b.destroy();
  // fetch's pool may have opened a connection it never sent a request on: closing waits for no one.
  app?.server.closeAllConnections();
  await app?.close();
  app = undefined;
});

/** A run whose stages each stored an artifact under their own key; the stage's name says what opening it does. */
function runRecord() {
  const stage = (name: string) => ({ name, type: 'build', status: 'SUCCEEDED', attempt: 1, result: { artifact: { key: artifactKey(RUN_ID, name, 1), sha256: 'a'.repeat(64), bytes: 3 } } });
  return { id: RUN_ID, pipeline: 'p', number: 1, stages: [stage('Held'), stage('Gone'), stage('Broken')] };
}

/** The run routes over real HTTP, with artifacts whose bodies the test ends (`held`), that are not there (Gone) or cannot be opened (Broken). */
async function serve(max: number): Promise<{ base: string; held: PassThrough[]; opens: () => number }> {
  const held: PassThrough[] = [];
  let opens = 0;
  const artifacts = {
    open: async (ref: { key: string }): Promise<ArtifactReader | undefined> => {
      opens++;
      if (ref.key.includes('Gone')) return undefined;
      if (ref.key.includes('Broken')) throw new Error('EIO: the disk is unwell');
      // Its first byte at once, as a file's would come: the response's headers go out with it.
      const stream = new PassThrough();
      stream.write('t');
      held.push(stream);
      bodies.push(stream);
      return { bytes: 3, stream };
    },
  };
  app = buildBaseServer({ logger: createLogger('test', 'silent'), registry: createRegistry('test'), readiness: {} });
  const deps = { runs: { get: async (id: string) => (id === RUN_ID ? runRecord() : undefined) }, artifacts, artifactDownloadsMax: max };
  app.register(runRoutes(deps as unknown as ServerDeps), { prefix: '/api/v1' });
  await app.listen({ port: 0, host: '127.0.0.1' });
  const address = app.server.address();
  if (!address || typeof address === 'string') throw new Error('no port');
  return { base: `http://127.0.0.1:${address.port}/api/v1/runs/${RUN_ID}/stages`, held, opens: () => opens };
}

/** Starts a download and returns once its headers came; the body is left unread until the test says. */
async function start(url: string, method = 'GET'): Promise<{ res: Response; abort: () => void }> {
  const abort = new AbortController();
  aborts.push(abort);
  const res = await fetch(url, { method, signal: abort.signal });
  return { res, abort: () => abort.abort() };
}

/** Asks until a download is served again (a slot is freed when the server sees its connection close). */
async function whenServed(url: string): Promise<Response> {
  for (let i = 0; i < 100; i++) {
    const { res } = await start(url);
    if (res.status !== 503) return res;
    await res.body?.cancel();
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error('no download slot was freed');
}

describe('artifact downloads at once (ARTIFACT_DOWNLOADS_MAX)', () => {
  it('serves at most the limit at once, counting each until its response ends or its client goes; past it 503 with Retry-After, without opening the file', async () => {
    const { base, held, opens } = await serve(2);
    const first = await start(`${base}/Held/artifact`);
    const second = await start(`${base}/Held/artifact`);
    expect([first.res.status, second.res.status]).toEqual([200, 200]);

    const refused = await start(`${base}/Held/artifact`);
    expect(refused.res.status).toBe(503);
    expect(refused.res.headers.get('retry-after')).toBe('5');
    expect(refused.res.headers.get('content-type')).toContain('application/problem+json');
    expect(((await refused.res.json()) as { detail: string }).detail).toMatch(/^2 artifacts are being downloaded from this service now, its most at once \(ARTIFACT_DOWNLOADS_MAX\)/);
    expect((await start(`${base}/Held/artifact`, 'HEAD')).res.status).toBe(503);
    expect(opens()).toBe(2);

    // One finishes (read to its end): its slot is free again.
    held[0]!.end('ar');
    expect(await first.res.text()).toBe('tar');
    const third = await whenServed(`${base}/Held/artifact`);
    expect(third.status).toBe(200);

    // One whose client goes away mid-body: freed too, though its file never ended.
    second.abort();
    const fourth = await whenServed(`${base}/Held/artifact`);
    expect(fourth.status).toBe(200);
    expect(held).toHaveLength(4);
  });

  it('keeps no slot for a HEAD, a 404 or an artifact that could not be opened', async () => {
    const { base } = await serve(2);
    const holding = await start(`${base}/Held/artifact`);
    expect(holding.res.status).toBe(200);
    for (let i = 0; i < 3; i++) {
      const head = await start(`${base}/Held/artifact`, 'HEAD');
      expect(head.res.status).toBe(200);
      expect((await start(`${base}/Gone/artifact`)).res.status).toBe(404);
      expect((await start(`${base}/Broken/artifact`)).res.status).toBe(500);
    }
    // One slot of two was held throughout: the second is still free, the third is not.
    const second = await start(`${base}/Held/artifact`);
    expect(second.res.status).toBe(200);
    expect((await start(`${base}/Held/artifact`)).res.status).toBe(503);
  });
});
