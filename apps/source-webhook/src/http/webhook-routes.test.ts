import { connect, type Socket } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { buildBaseServer, createLogger, createRegistry, type App } from '@conveyor/service-kit';
import type { ServerDeps } from './server.js';
import { WEBHOOK_BODIES_IN_FLIGHT, webhookRoutes } from './webhook-routes.js';

const LIMIT = 1000;
let app: App | undefined;
const sockets: Socket[] = [];
afterEach(async () => {
  for (const s of sockets.splice(0)) s.destroy();
  await app?.close();
  app = undefined;
});

/** The webhook routes over real HTTP, with an intake that refuses every signature (as for a stranger). */
async function serve(idleTimeoutMs?: number): Promise<{ port: number; seen: () => number }> {
  let seen = 0;
  app = buildBaseServer({ logger: createLogger('test', 'silent'), registry: createRegistry('test'), readiness: {}, ...(idleTimeoutMs ? { idleTimeoutMs } : {}) });
  const intake = {
    github: async () => {
      seen += 1;
      return { status: 200 as const, body: { checked: true } };
    },
  };
  app.register(webhookRoutes({ intake, webhookBodyLimit: LIMIT } as unknown as ServerDeps), { prefix: '/webhooks' });
  await app.listen({ port: 0, host: '127.0.0.1' });
  const address = app.server.address();
  if (!address || typeof address === 'string') throw new Error('no port');
  return { port: address.port, seen: () => seen };
}

/** Sends the headers of a POST that says it carries `length` bytes, and part of its body; returns what the server answers (if it does). */
function holdOpen(port: number, length: number | undefined): { answer: Promise<string> } {
  const socket = connect(port, '127.0.0.1');
  sockets.push(socket);
  let text = '';
  socket.setEncoding('utf8');
  socket.on('data', (chunk: string) => (text += chunk));
  socket.on('error', () => undefined);
  const lengthHeader = length === undefined ? 'transfer-encoding: chunked\r\n' : `content-length: ${length}\r\n`;
  socket.write(`POST /webhooks/github HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n${lengthHeader}\r\n${length === undefined ? '1\r\n{\r\n' : '{'}`);
  return { answer: new Promise((resolve) => socket.on('close', () => resolve(text))) };
}

async function post(port: number, body: string): Promise<{ status: number; retryAfter: string | null; json: { detail?: string; checked?: boolean } }> {
  const res = await fetch(`http://127.0.0.1:${port}/webhooks/github`, { method: 'POST', headers: { 'content-type': 'application/json' }, body });
  return { status: res.status, retryAfter: res.headers.get('retry-after'), json: (await res.json()) as { detail?: string; checked?: boolean } };
}

const settle = () => new Promise((r) => setTimeout(r, 100));

describe('webhook bodies in flight', () => {
  it('holds at most WEBHOOK_BODIES_IN_FLIGHT bodies of the largest size at once: past it, 503 with Retry-After, before reading the body', async () => {
    const { port, seen } = await serve();
    // Senders who never finish their bodies: each reserves what it announces (a chunked one, the limit).
    for (let i = 0; i < WEBHOOK_BODIES_IN_FLIGHT - 1; i++) holdOpen(port, LIMIT);
    holdOpen(port, undefined);
    await settle();
    const refused = await post(port, '{}');
    expect(refused.status).toBe(503);
    expect(refused.retryAfter).toBe('5');
    expect(refused.json.detail).toContain(`at most ${WEBHOOK_BODIES_IN_FLIGHT * LIMIT} bytes`);
    expect(seen()).toBe(0);

    // Once they are gone, their reservations are released.
    for (const s of sockets.splice(0)) s.destroy();
    await settle();
    const taken = await post(port, '{}');
    expect(taken.status).toBe(200);
    expect(taken.json.checked).toBe(true);
    expect(seen()).toBe(1);
  });

  it('a sender that goes silent is cut off, and what it reserved is given back', async () => {
    const { port, seen } = await serve(500);
    const held = Array.from({ length: WEBHOOK_BODIES_IN_FLIGHT }, () => holdOpen(port, LIMIT));
    await settle();
    expect((await post(port, '{}')).status).toBe(503);
    // Nothing more comes from them: the server closes their connections.
    await Promise.all(held.map((h) => h.answer));
    await settle();
    expect((await post(port, '{}')).status).toBe(200);
    expect(seen()).toBe(1);
  });

  it('reserves what a request says it sends: small deliveries pass beside a large one held open', async () => {
    const { port, seen } = await serve();
    for (let i = 0; i < WEBHOOK_BODIES_IN_FLIGHT - 1; i++) holdOpen(port, LIMIT);
    await settle();
    const answers = await Promise.all(Array.from({ length: 20 }, () => post(port, '{"zen":"small"}')));
    expect(answers.map((a) => a.status)).toEqual(Array(20).fill(200));
    expect(seen()).toBe(20);
    // A body over the limit is still refused as too large, whatever the budget.
    expect((await post(port, JSON.stringify({ pad: 'x'.repeat(LIMIT) }))).status).toBe(413);
  });
});
