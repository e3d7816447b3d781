import { createServer } from 'node:net';

/**
 * A loopback port nobody listens on right now. Another process may take it before the caller binds
 * it; callers that start a server on it must cope (the deployer's health check fails the version).
 */
export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      srv.close(() => (typeof addr === 'object' && addr ? resolve(addr.port) : reject(new Error('no free port'))));
    });
  });
}
