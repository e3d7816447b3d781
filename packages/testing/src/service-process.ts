import { spawn, type ChildProcess } from 'node:child_process';
import { get } from 'node:http';
import { freePort } from './redis-server.js';

export interface RunningService {
  url: string;
  process: ChildProcess;
  output(): string;
  /** SIGTERM; resolves with the exit code. */
  stop(): Promise<number | null>;
}

/** Starts an app's real entry point (`<appDir>/src/main.ts`) on a free port and waits until /readyz answers 200. */
export async function startServiceProcess(appDir: string, env: Record<string, string>): Promise<RunningService> {
  const port = await freePort();
  const child = spawn(process.execPath, ['--import', 'tsx', 'src/main.ts'], {
    cwd: appDir,
    env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '', LOG_LEVEL: 'info', ...env, PORT: String(port), HOST: '127.0.0.1' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  child.stdout!.on('data', (d) => (output += d));
  child.stderr!.on('data', (d) => (output += d));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  const url = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + 30_000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`service exited with ${child.exitCode}:\n${output}`);
    const ok = await fetch(`${url}/readyz`, { signal: AbortSignal.timeout(2000) }).then((r) => r.status === 200, () => false);
    if (ok) break;
    if (Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(`service not ready after 30 s:\n${output}`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  return {
    url,
    process: child,
    output: () => output,
    async stop() {
      if (child.exitCode === null) child.kill('SIGTERM');
      return exited;
    },
  };
}

/**
 * GET over a new connection every time (no keep-alive pool): a probe must see what serves the port now,
 * not meet a pooled socket whose server has since gone (a reset, where a fresh connection is refused).
 */
export function getJson(url: string): Promise<{ status: number; body: any } | { error: string }> {
  return new Promise((resolve) => {
    const req = get(url, { agent: false, timeout: 3000 }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => (text += chunk));
      res.on('end', () => {
        let body: unknown;
        try {
          body = JSON.parse(text);
        } catch {
          body = undefined;
        }
        resolve({ status: res.statusCode ?? 0, body });
      });
      res.on('error', (err) => resolve({ error: String(err) }));
    });
    req.on('timeout', () => req.destroy(new Error('timed out after 3000 ms')));
    req.on('error', (err) => resolve({ error: String(err) }));
  });
}
