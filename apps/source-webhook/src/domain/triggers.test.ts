import { describe, expect, it } from 'vitest';
import { PipelineDefinition, type SourceEvent } from '@conveyor/contracts';
import { decideTrigger, normalizeRepositoryUrl } from './triggers.js';

const def = (source: Record<string, unknown>) =>
  PipelineDefinition.parse({
    name: 'p',
    source: { provider: 'github', repository: 'https://github.com/o/r.git', ...source },
    stages: [{ name: 'Build', type: 'build' }],
  });
const push = (over: Partial<SourceEvent>): SourceEvent => ({
  v: 1, provider: 'github', event: 'push', deliveryId: 'd', repositoryUrls: ['x'], ref: 'refs/heads/main', branch: 'main', after: 'a'.repeat(40), deleted: false, ...over,
});

describe('decideTrigger', () => {
  it('defaults to pushes on the source branch', () => {
    expect(decideTrigger(def({ branch: 'main' }), push({}))).toEqual({ run: true });
    expect(decideTrigger(def({ branch: 'main' }), push({ ref: 'refs/heads/dev', branch: 'dev' }))).toMatchObject({ run: false, reason: expect.stringContaining('dev') });
  });
  it('applies include and exclude globs', () => {
    const d = def({ triggers: [{ event: 'push', branches: { include: ['release/**', 'main'], exclude: ['release/old-*'] } }] });
    expect(decideTrigger(d, push({ branch: 'release/1.2' })).run).toBe(true);
    expect(decideTrigger(d, push({ branch: 'release/old-1' }))).toMatchObject({ run: false, reason: expect.stringContaining("release/old-1 excluded by the trigger's branch filter") });
    expect(decideTrigger(d, push({ branch: 'feature/x' }))).toMatchObject({ run: false, reason: expect.stringContaining("feature/x not in the trigger's branch filter") });
  });
  it('tags need a tag filter', () => {
    const d = def({ triggers: [{ event: 'push', tags: { include: ['v*'] } }] });
    expect(decideTrigger(d, push({ ref: 'refs/tags/v1.0.0', branch: undefined, tag: 'v1.0.0' })).run).toBe(true);
    expect(decideTrigger(d, push({ ref: 'refs/tags/x', branch: undefined, tag: 'x' })).run).toBe(false);
    expect(decideTrigger(def({}), push({ ref: 'refs/tags/v1', branch: undefined, tag: 'v1' })).run).toBe(false);
  });
  it('filters on changed file paths', () => {
    const d = def({ triggers: [{ event: 'push', branches: { include: ['main'] }, filePaths: { include: ['src/**'], exclude: ['**/*.md'] } }] });
    expect(decideTrigger(d, push({ changedFiles: ['src/a.ts'] })).run).toBe(true);
    expect(decideTrigger(d, push({ changedFiles: ['docs/a.md', 'src/b.md'] })).run).toBe(false);
    expect(decideTrigger(d, push({})).run).toBe(true);
  });
  it('runs nothing for a ref that is neither a branch nor a tag, whatever the filters', () => {
    for (const d of [def({}), def({ triggers: [{ event: 'push', branches: { include: ['**'] } }] }), def({ triggers: [{ event: 'push' }] })]) {
      expect(decideTrigger(d, push({ ref: 'refs/pull/1/head', branch: undefined }))).toEqual({ run: false, reason: 'ref refs/pull/1/head is neither a branch nor a tag' });
    }
  });
  it('never runs a deleted ref', () => {
    expect(decideTrigger(def({}), push({ deleted: true }))).toMatchObject({ run: false, reason: expect.stringContaining('deleted') });
  });
});

describe('normalizeRepositoryUrl', () => {
  it('gives one spelling for https, ssh and scp-like addresses', () => {
    const want = 'github.com/Octo/Repo';
    expect(normalizeRepositoryUrl('https://GitHub.com/Octo/Repo.git')).toBe(want);
    expect(normalizeRepositoryUrl('git@github.com:Octo/Repo.git')).toBe(want);
    expect(normalizeRepositoryUrl('ssh://git@github.com/Octo/Repo')).toBe(want);
    expect(normalizeRepositoryUrl('https://github.com/Octo/Repo/')).toBe(want);
    expect(normalizeRepositoryUrl('file:///tmp/Repo.git')).toBe('/tmp/Repo');
  });
});

