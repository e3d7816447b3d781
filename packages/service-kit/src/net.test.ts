import { createServer, type Server } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { freePortRange } from './net.js';

const servers: Server[] = [];
const listen = (port: number) =>
  new Promise<Server>((resolve, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(port, '127.0.0.1', () => resolve(srv));
  });

afterEach(async () => {
  await Promise.all(servers.splice(0).map((s) => new Promise((r) => s.close(r))));
});

describe('freePortRange', () => {
  it('returns consecutive ports below the ephemeral range that can all be bound', async () => {
    const base = await freePortRange(5);
    expect(base).toBeGreaterThanOrEqual(20_000);
    expect(base + 4).toBeLessThan(32_768);
    for (let i = 0; i < 5; i++) servers.push(await listen(base + i));
  });

  it('skips a range with a port in use', async () => {
    const base = await freePortRange(6);
    servers.push(await listen(base + 2));
    // The first pick lands on the taken port's range, the second right after it.
    const picks = [base, base + 3].map((p) => (p - 20_000 + 0.5) / (12_000 - 3));
    expect(await freePortRange(3, () => picks.shift()!)).toBe(base + 3);
  });
});
