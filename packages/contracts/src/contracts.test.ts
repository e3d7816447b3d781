import { z } from 'zod';
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { GitRefName, parseJsonAs, PipelineDefinition, PipelineName, Run, RunEvent, SourceEvent, StageJob, StageResult, StartRunBody, stageJobId, toPipelineView, toRunView } from './index.js';

const FIXTURES = join(import.meta.dirname, '..', 'fixtures');
const load = async (version: string, name: string) => JSON.parse(await readFile(join(FIXTURES, version, name), 'utf8'));

/** Contracts change additively: every payload stored as a fixture for a past version must still parse. */
describe('fixtures of every contract version still parse', async () => {
  const versions = await readdir(FIXTURES);
  it('there is at least the v1 set', () => expect(versions).toContain('v1'));
  for (const v of versions) {
    it(`${v}: pipeline definition, source event, run, run events`, async () => {
      expect(PipelineDefinition.parse(await load(v, 'pipeline-definition.json')).stages).toHaveLength(4);
      expect(SourceEvent.parse(await load(v, 'source-event.json')).branch).toBe('main');
      expect(Run.parse(await load(v, 'run.json')).status).toBe('FAILED');
      for (const e of await load(v, 'run-events.json')) expect(RunEvent.parse(e).v).toBe(1);
    });
    it(`${v}: every stage job and result`, async () => {
      for (const type of ['source', 'build', 'test', 'deploy', 'monitor']) {
        expect(StageJob.parse(await load(v, `stage-job.${type}.json`)).type).toBe(type);
      }
      expect(StageResult.parse(await load(v, 'stage-result.source.json')).status).toBe('SUCCEEDED');
      expect(StageResult.parse(await load(v, 'stage-result.test.json')).output.tests?.failed).toBe(1);
    });
  }
});

describe('PipelineDefinition', () => {
  const base = { name: 'p', source: { provider: 'github', repository: 'https://github.com/o/r.git' }, stages: [{ name: 'Build', type: 'build' }] };
  const issues = (value: unknown) => {
    const r = PipelineDefinition.safeParse(value);
    return r.success ? [] : r.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`);
  };

  it('fills the defaults a user leaves out', () => {
    const def = PipelineDefinition.parse(base);
    expect(def.source.branch).toBe('main');
    expect(def.stages[0]).toMatchObject({ buildspec: 'buildspec.yml', timeoutMinutes: 60, env: { variables: {} } });
  });

  it.each([
    [{ ...base, name: 'Has Caps' }, 'name'],
    [{ ...base, source: { ...base.source, repository: 'https://user:token@github.com/o/r.git' } }, 'source.repository'],
    [{ ...base, source: { ...base.source, repository: 'ftp://x' } }, 'source.repository'],
    [{ ...base, source: { ...base.source, repository: 'https://ghp_token123@github.com/o/r.git' } }, 'source.repository'],
    [{ ...base, source: { ...base.source, webhookSecret: 'short' } }, 'source.webhookSecret'],
    [{ ...base, stages: [] }, 'stages'],
    [{ ...base, stages: [{ name: 'Build', type: 'build' }, { name: 'Build', type: 'test' }] }, 'stages.1.name'],
    [{ ...base, stages: [{ name: 'Source', type: 'build' }] }, 'stages.0.name'],
    [{ ...base, stages: [{ name: 'has.dot', type: 'build' }] }, 'stages.0.name'],
    [{ ...base, stages: [{ name: 'M', type: 'monitor' }] }, 'stages.0.type'],
    [{ ...base, stages: [{ name: 'B', type: 'build', env: { variables: { CODEBUILD_X: '1' } } }] }, 'stages.0.env.variables.CODEBUILD_X'],
    // As JSON.parse (or YAML) gives it: an own key, which a copy into a plain object would lose.
    [{ ...base, stages: [{ name: 'B', type: 'build', env: { variables: JSON.parse('{"__proto__": "x", "A": "b"}') as Record<string, string> } }] }, 'stages.0.env.variables.__proto__'],
    [{ ...base, stages: [{ name: 'D', type: 'deploy', target: { kind: 'local', command: 'x', healthPath: 'nope' } }] }, 'stages.0.target.healthPath'],
    [{ ...base, extra: true }, ''],
    [{ ...base, source: { ...base.source, branch: '-bad..branch' } }, 'source.branch'],
    [{ ...base, stages: [{ name: 'B', type: 'build', buildspec: '../../etc/passwd' }] }, 'stages.0.buildspec'],
    [{ ...base, stages: [{ name: 'B', type: 'build', buildspec: '/etc/passwd' }] }, 'stages.0.buildspec'],
  ])('refuses %j naming %s', (value, path) => {
    expect(issues(value).some((i) => i.startsWith(`${path}:`) || (path === '' && i.includes('extra')))).toBe(true);
  });

  it('takes ref names as git check-ref-format does', () => {
    for (const ok of ['main', 'feature/x-1', 'refs/heads/main', 'refs/tags/v1.0', 'release_2026', 'a;b']) expect(GitRefName.safeParse(ok).success, ok).toBe(true);
    for (const bad of ['-bad', '--upload-pack=touch /tmp/pwned', 'main;rm -rf /', 'a..b', 'x.lock', 'a//b', '@', '.hidden', 'a/.b', 'a/', 'a.', 'a@{1}', 'a b', 'a~1', 'a^', 'a:b', 'a*', 'a\\b', 'tab\there']) {
      expect(GitRefName.safeParse(bad).success, bad).toBe(false);
    }
    expect(StartRunBody.safeParse({ ref: '--upload-pack=x' }).success).toBe(false);
    expect(PipelineDefinition.parse({ ...base, stages: [{ name: 'B', type: 'build', buildspec: 'ci/buildspec.yml' }] }).stages[0]).toMatchObject({ buildspec: 'ci/buildspec.yml' });
  });

  it('accepts any name of the pattern, `active` too (the run store no longer keeps a key beside `runs:<pipeline>`)', () => {
    for (const name of ['active', 'a', 'hello-service', '0-x']) expect(PipelineDefinition.safeParse({ ...base, name }).success, name).toBe(true);
    expect(PipelineName.parse('active')).toBe('active');
    expect(Run.shape.pipeline.safeParse('active').success).toBe(true);
  });

  it('accepts ssh and scp-style addresses with a plain user name', () => {
    for (const repository of ['ssh://git@github.com/o/r.git', 'git@github.com:o/r.git', 'file:///srv/git/r.git']) {
      expect(PipelineDefinition.safeParse({ ...base, source: { ...base.source, repository } }).success).toBe(true);
    }
  });

  it('never shows the webhook secret in its view', () => {
    const view = toPipelineView(PipelineDefinition.parse({ ...base, source: { ...base.source, webhookSecret: 's'.repeat(20) } }));
    expect(JSON.stringify(view)).not.toContain('s'.repeat(20));
    expect(view.source.hasWebhookSecret).toBe(true);
    // A pipeline that declares no variables is shown as it was written, without an empty list.
    expect(view).not.toHaveProperty('variables');
    expect(toPipelineView(PipelineDefinition.parse({ ...base, variables: [{ name: 'A' }] })).variables).toEqual([{ name: 'A' }]);
  });
});

describe('runs and jobs', () => {
  it('job ids are <runId>.<stage>.<attempt>, with no colon', () => {
    expect(stageJobId('abc-123', 'Build', 2)).toBe('abc-123.Build.2');
  });

  it('a run stored with an outbox (before jobs were rebuilt from the run) still parses; the view hides the plan and the version', async () => {
    const stored = (await load('v1', 'run.json')) as Record<string, unknown>;
    expect(stored).toHaveProperty('outbox');
    const view = toRunView(Run.parse(stored));
    expect(view).not.toHaveProperty('outbox');
    expect(view).not.toHaveProperty('plan');
    expect(view).not.toHaveProperty('version');
  });

  it('a monitor job only probes http(s)', async () => {
    const job = await load('v1', 'stage-job.monitor.json');
    expect(StageJob.safeParse({ ...job, url: 'file:///etc/passwd' }).success).toBe(false);
    expect(StageJob.safeParse({ ...job, url: 'https://example.com/' }).success).toBe(true);
  });

  it('refuses a stage result without its identity', () => {
    expect(StageResult.safeParse({ v: 1, status: 'SUCCEEDED' }).success).toBe(false);
    expect(StageResult.safeParse({ v: 2, jobId: 'a.B.1' }).success).toBe(false);
  });
});

describe('parseJsonAs (stored JSON, never trusted)', () => {
  it('gives the value only when there is one, it is JSON, and it fits the schema', () => {
    const Schema = z.object({ n: z.number() });
    expect(parseJsonAs(Schema, '{"n":1}')).toEqual({ n: 1 });
    for (const text of [null, undefined, '', '{', '{"n":"1"}', 'null']) expect(parseJsonAs(Schema, text)).toBeUndefined();
  });
});
