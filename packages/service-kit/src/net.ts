import { createServer } from 'node:net';

/**
 * A loopback port nobody listens on right now, below the ephemeral range like `freePortRange`: an
 * outgoing connection never takes it meanwhile. Another server may still bind it before the caller
 * does; callers that start a server on it must cope (the deployer's health check fails the version).
 */
export async function freePort(): Promise<number> {
  return freePortRange(1);
}

/** Why a server could not listen on `port` at `host` now ('in use', or the error), undefined when it could. */
export function listenProblem(port: number, host = '127.0.0.1'): Promise<string | undefined> {
  return new Promise((resolve) => {
    const srv = createServer();
    srv.unref();
    srv.once('error', (err: NodeJS.ErrnoException) => resolve(err.code === 'EADDRINUSE' ? 'in use' : err.message));
    srv.listen(port, host, () => srv.close(() => resolve(undefined)));
  });
}

async function canListen(port: number): Promise<boolean> {
  return (await listenProblem(port)) === undefined;
}

/**
 * The first of `count` consecutive loopback ports nobody listens on, below Linux's ephemeral range
 * (32768 and up), so that no outgoing connection takes one of them before the caller binds it.
 */
export async function freePortRange(count: number, random: () => number = Math.random): Promise<number> {
  for (let attempt = 0; attempt < 50; attempt++) {
    const base = 20_000 + Math.floor(random() * (12_000 - count));
    let free = true;
    for (let i = 0; i < count && free; i++) free = await canListen(base + i);
    if (free) return base;
  }
  throw new Error(`no ${count} consecutive free ports found between 20000 and 32000`);
}
