import { createHmac } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { PipelineDefinition } from '@conveyor/contracts';
import { createLogger } from '@conveyor/service-kit';
import type { Orchestrator } from './orchestrator.js';
import type { PipelineStore, RunStore } from './ports.js';
import { WebhookIntake } from './webhook-intake.js';

const SECRET = 's'.repeat(32);
const REPO = 'https://github.com/acme/app.git';

describe('WebhookIntake', () => {
  it('gives the rest of the service a turn between the trigger decisions of the pipelines a push matches', async () => {
    const marks: string[] = [];
    // Each pipeline notes when its triggers are read: that is when its decision is made.
    const pipeline = (name: string) => {
      const def = PipelineDefinition.parse({ name, source: { provider: 'github', repository: REPO, webhookSecret: SECRET, triggers: [{ event: 'push', branches: { include: ['main'] } }] }, stages: [{ name: 'Build', type: 'build' }] });
      const { triggers } = def.source;
      Object.defineProperty(def.source, 'triggers', { get: () => (marks.push(`decide ${name}`), triggers), enumerable: true });
      return def;
    };
    const pipelines = [pipeline('one'), pipeline('two'), pipeline('three')];
    const store = { list: async () => pipelines, get: async () => undefined } as unknown as PipelineStore;
    const runs = { recordDelivery: async () => undefined } as unknown as RunStore;
    let n = 0;
    const orchestrator = { startRun: async () => ({ runId: `run-0000000${++n}`, duplicate: false }) } as unknown as Orchestrator;
    const intake = new WebhookIntake({ pipelines: store, runs, orchestrator, logger: createLogger('test', 'silent') });
    const body = Buffer.from(JSON.stringify({ ref: 'refs/heads/main', before: '0'.repeat(40), after: 'a'.repeat(40), repository: { clone_url: REPO } }));
    const signature = `sha256=${createHmac('sha256', SECRET).update(body).digest('hex')}`;

    const reply = intake.github({ event: 'push', deliveryId: 'd-1', signature, rawBody: body });
    // What else the service has to do, queued behind the delivery: one piece, then another once it is done.
    setImmediate(() => {
      marks.push('other work');
      setImmediate(() => marks.push('more other work'));
    });
    expect((await reply).status).toBe(202);
    const first = (name: string) => marks.indexOf(`decide ${name}`);
    expect(first('one')).toBeGreaterThanOrEqual(0);
    expect(first('one')).toBeLessThan(marks.indexOf('other work'));
    expect(marks.indexOf('other work')).toBeLessThan(first('two'));
    expect(first('two')).toBeLessThan(marks.indexOf('more other work'));
    expect(marks.indexOf('more other work')).toBeLessThan(first('three'));
    expect(n).toBe(3);
  });

  it('checks the signature once per distinct secret: every pipeline of the signing secret matches, no other', async () => {
    const other = 'o'.repeat(32);
    const def = (name: string, secret: string) => PipelineDefinition.parse({ name, source: { provider: 'github', repository: REPO, webhookSecret: secret }, stages: [{ name: 'Build', type: 'build' }] });
    const pipelines = [def('one', SECRET), def('two', other), def('three', SECRET), def('four', 'f'.repeat(32))];
    const store = { list: async () => pipelines, get: async () => undefined } as unknown as PipelineStore;
    const started: string[] = [];
    const orchestrator = { startRun: async (p: PipelineDefinition) => (started.push(p.name), { runId: `run-0000-${p.name}`, duplicate: false }) } as unknown as Orchestrator;
    const intake = new WebhookIntake({ pipelines: store, runs: { recordDelivery: async () => undefined } as unknown as RunStore, orchestrator, logger: createLogger('test', 'silent') });
    // Large enough for the service to be given a turn between two secrets' HMACs.
    const body = Buffer.from(JSON.stringify({ ref: 'refs/heads/main', before: '0'.repeat(40), after: 'a'.repeat(40), repository: { clone_url: REPO }, pad: 'x'.repeat(300_000) }));
    const signature = `sha256=${createHmac('sha256', SECRET).update(body).digest('hex')}`;
    expect((await intake.github({ event: 'push', deliveryId: 'd-2', signature, rawBody: body })).status).toBe(202);
    expect(started.sort()).toEqual(['one', 'three']);
  });
});
