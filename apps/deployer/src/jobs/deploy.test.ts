import { Counter, Registry } from 'prom-client';
import { describe, expect, it } from 'vitest';
import type { DeployJob } from '@conveyor/contracts';
import { createLogger, PermanentJobError, type Redis } from '@conveyor/service-kit';
import type { DeployOutcome, DeployTarget } from '../ports.js';
import { createDeployHandler } from './deploy.js';

/** Enough of ioredis for openStageLog: records what is appended. */
function fakeRedis() {
  const appended: string[] = [];
  const tx = { append: (_k: string, v: string) => (appended.push(v), tx), expire: () => tx, exec: async () => [] };
  return { redis: { multi: () => tx } as unknown as Redis, log: () => appended.join('') };
}

const job = {
  v: 1, type: 'deploy', jobId: 'run-00000001.Deploy.1', runId: 'run-00000001', runNumber: 1, pipeline: 'shop', stage: 'Deploy',
  stageIndex: 2, attempt: 1, trigger: { type: 'manual', ref: 'refs/heads/main' }, commit: 'c'.repeat(40),
  input: { key: 'runs/x/Build-1.tar', sha256: '0'.repeat(64), bytes: 1 },
  target: { kind: 'local', command: 'node server.mjs', healthPath: '/healthz', healthTimeoutSeconds: 5, env: {} },
} as DeployJob;

function setup(deploy: DeployTarget['deploy']) {
  const { redis, log } = fakeRedis();
  const registry = new Registry();
  const deploys = new Counter({ name: 'deploys', help: 'h', labelNames: ['pipeline', 'result'] as const, registers: [registry] });
  const handler = createDeployHandler({ targets: [{ kind: 'local', deploy }], redis, prefix: 'p', deploys });
  const ctx = { logger: createLogger('t', 'silent'), signal: new AbortController().signal, deliveries: 0 };
  const count = async (result: string) => (await deploys.get()).values.find((v) => v.labels.result === result)?.value ?? 0;
  return { run: () => handler(job, ctx), log, count };
}

describe('deploy handler', () => {
  it('succeeds with the URL when the target deployed', async () => {
    const h = setup(async (_j, ctx) => {
      ctx.log('started');
      return { status: 'deployed', url: 'http://127.0.0.1:4100' } satisfies DeployOutcome;
    });
    expect(await h.run()).toEqual({ status: 'SUCCEEDED', message: 'deployed at http://127.0.0.1:4100', output: { url: 'http://127.0.0.1:4100' } });
    expect(h.log()).toBe('started\n');
    expect(await h.count('deployed')).toBe(1);
  });

  it('succeeds without change, saying so, when a re-delivered version was replaced by a later run', async () => {
    const by = { runId: 'run-00000002', url: 'http://127.0.0.1:4200' };
    const h = setup(async () => ({ status: 'superseded', url: 'http://127.0.0.1:4100', by }) satisfies DeployOutcome);
    const message = "superseded: run run-00000002's version went live after this one (http://127.0.0.1:4200 serves); nothing was started or stopped";
    expect(await h.run()).toEqual({ status: 'SUCCEEDED', message, output: { url: 'http://127.0.0.1:4100', supersededBy: by } });
    expect(h.log()).toBe(`${message}\n`);
    expect(await h.count('superseded')).toBe(1);
  });

  it('fails with the target message when the version was unhealthy', async () => {
    const h = setup(async () => ({ status: 'unhealthy', message: '/healthz did not answer 200 within 5s' }));
    expect(await h.run()).toEqual({ status: 'FAILED', message: '/healthz did not answer 200 within 5s' });
    expect(h.log()).toContain('deploy failed: /healthz did not answer');
  });

  it('lets errors through for a retry, after logging them', async () => {
    const h = setup(async () => {
      throw new Error('disk full');
    });
    await expect(h.run()).rejects.toThrow('disk full');
    expect(h.log()).toContain('deploy errored: disk full');
    expect(await h.count('error')).toBe(1);
  });

  it('refuses a target kind it has no adapter for, permanently', async () => {
    const { redis } = fakeRedis();
    const deploys = new Counter({ name: 'd2', help: 'h', labelNames: ['pipeline', 'result'] as const, registers: [] });
    const handler = createDeployHandler({ targets: [], redis, prefix: 'p', deploys });
    await expect(handler(job, { logger: createLogger('t', 'silent'), signal: new AbortController().signal, deliveries: 0 })).rejects.toBeInstanceOf(PermanentJobError);
  });
});
