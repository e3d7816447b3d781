import { describe, expect, it } from 'vitest';
import { PipelineDefinition, type SourceEvent } from '@conveyor/contracts';
import { decideTrigger, normalizeRepositoryUrl, TRIGGER_GLOB_LIMITS, triggerGlobIssues } from './triggers.js';

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
  it('a trigger with file paths alone takes any branch whose push changed a matching file', () => {
    const d = def({ triggers: [{ event: 'push', filePaths: { include: ['src/**'] } }] });
    expect(decideTrigger(d, push({ branch: 'feature/x', ref: 'refs/heads/feature/x', changedFiles: ['src/a.ts'] })).run).toBe(true);
    expect(decideTrigger(d, push({ changedFiles: ['README.md'] }))).toEqual({ run: false, reason: "no changed file matches the trigger's file path filter" });
    expect(decideTrigger(d, push({ ref: 'refs/tags/v1', branch: undefined, tag: 'v1', changedFiles: ['src/a.ts'] }))).toEqual({ run: false, reason: 'trigger has no tag filter, push is a tag' });
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

/*
 * Against a name of `a`×120, picomatch's regex for this glob backtracks for hours: in the control
 * plane's only JS thread, every pipeline's API and webhooks would wait.
 */
const CATASTROPHIC = `${'*a'.repeat(10)}*b`;
const VICTIM = 'a'.repeat(120);
const tooSlow = (field: string) => `${field}: the glob "${CATASTROPHIC}" took longer than ${TRIGGER_GLOB_LIMITS.perGlobMs / 1000} s to match; simplify it`;

describe('decideTrigger: globs are matched within time limits', () => {
  it('a file path glob that backtracks catastrophically on a changed file runs nothing, naming its field', () => {
    const d = def({ triggers: [{ event: 'push', branches: { include: ['main'] }, filePaths: { include: ['docs/**', CATASTROPHIC] } }] });
    expect(decideTrigger(d, push({ changedFiles: ['src/x.ts', VICTIM] }))).toEqual({ run: false, reason: tooSlow('source.triggers.0.filePaths.include.1') });
  });

  it('so does a branch or tag glob against a long ref name, after the reasons of the triggers before it', () => {
    const d = def({ triggers: [{ event: 'push', tags: { include: ['v*'] } }, { event: 'push', branches: { include: ['**'], exclude: [CATASTROPHIC] } }] });
    expect(decideTrigger(d, push({ ref: `refs/heads/${VICTIM}`, branch: VICTIM }))).toEqual({ run: false, reason: `trigger filters tags, push is a branch; ${tooSlow('source.triggers.1.branches.exclude.0')}` });
    const t = def({ triggers: [{ event: 'push', tags: { include: [CATASTROPHIC] } }] });
    expect(decideTrigger(t, push({ ref: `refs/tags/${VICTIM}`, branch: undefined, tag: VICTIM }))).toEqual({ run: false, reason: tooSlow('source.triggers.0.tags.include.0') });
  });

  it('all the globs of a pipeline share one budget per delivery', () => {
    // Two triggers, each glob within its own time limit, but not both within the pipeline's.
    const d = def({
      triggers: [
        { event: 'push', branches: { include: ['main'] }, filePaths: { include: [CATASTROPHIC] } },
        { event: 'push', branches: { include: ['main'] }, filePaths: { include: [`x${CATASTROPHIC}`] } },
      ],
    });
    const limits = { ...TRIGGER_GLOB_LIMITS, perGlobMs: 150, perSectionMs: 200 };
    expect(decideTrigger(d, push({ changedFiles: [VICTIM, `x${VICTIM}`] }), limits)).toEqual({
      run: false,
      reason: [
        `source.triggers.0.filePaths.include.0: the glob "${CATASTROPHIC}" took longer than 0.15 s to match; simplify it`,
        'source.triggers.1.filePaths.include.0: the globs of source.triggers took longer than 0.2 s in all to match; use fewer or simpler globs',
      ].join('; '),
    });
  });

  it('a trigger whose glob fails does not keep the triggers after it from matching', () => {
    const d = def({ triggers: [{ event: 'push', branches: { include: ['main'] }, filePaths: { include: [CATASTROPHIC] } }, { event: 'push', branches: { include: ['main'] } }] });
    expect(decideTrigger(d, push({ changedFiles: [VICTIM] }), { ...TRIGGER_GLOB_LIMITS, perGlobMs: 100, perSectionMs: 500 })).toEqual({ run: true });
  });

  it('keeps picomatch dot: true semantics: globs match dot files and directories', () => {
    const d = def({ triggers: [{ event: 'push', branches: { include: ['*'] }, filePaths: { include: ['**/*.yml'] } }] });
    expect(decideTrigger(d, push({ changedFiles: ['.github/workflows/ci.yml'] })).run).toBe(true);
    expect(decideTrigger(d, push({ ref: 'refs/heads/.x', branch: '.x', changedFiles: ['a.yml'] })).run).toBe(true);
  });

  it('a glob nested too deep, stored before definitions were checked, runs nothing, naming its field', () => {
    const deep = `${'!('.repeat(33)}a${')'.repeat(33)}`;
    const d = def({ triggers: [{ event: 'push', branches: { include: ['main'], exclude: [deep] } }] });
    expect(decideTrigger(d, push({}))).toEqual({ run: false, reason: 'source.triggers.0.branches.exclude.0: the glob nests ( and { groups 33 deep, more than the 32 allowed; simplify it' });
  });
});

describe('triggerGlobIssues', () => {
  it('names each glob whose shape is refused, by its path in the definition', () => {
    const deep = `${'{a,'.repeat(33)}b${'}'.repeat(33)}`;
    const d = def({ triggers: [{ event: 'push', branches: { include: ['main'] } }, { event: 'push', filePaths: { include: ['src/**', deep], exclude: [deep] } }] });
    expect(triggerGlobIssues(d)).toEqual([
      { path: 'source.triggers.1.filePaths.include.1', message: 'the glob nests ( and { groups 33 deep, more than the 32 allowed; simplify it' },
      { path: 'source.triggers.1.filePaths.exclude.0', message: 'the glob nests ( and { groups 33 deep, more than the 32 allowed; simplify it' },
    ]);
    expect(triggerGlobIssues(def({ triggers: [{ event: 'push', branches: { include: ['release/**'] }, filePaths: { include: [CATASTROPHIC] } }] }))).toEqual([]);
    expect(triggerGlobIssues(def({}))).toEqual([]);
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

