import picomatch from 'picomatch';
import { describe, expect, it } from 'vitest';
import { CATASTROPHIC_GLOB, GLOB_VICTIM } from '@conveyor/testing';
import { GlobError } from './glob-error.js';
import { checkGlobShape, GLOB_LIMITS, GlobMatcher, type Glob } from './glob-matcher.js';

/** `*a` nine times then `*b`, against a name of 45 `a`s: picomatch's regex backtracks for about 30 s. */
const CATASTROPHIC = CATASTROPHIC_GLOB;
const VICTIM = GLOB_VICTIM;

const globs = (field: string, ...patterns: string[]): Glob[] => patterns.map((pattern, i) => ({ field: `${field}[${i}]`, pattern }));

async function failure(work: Promise<unknown>): Promise<string> {
  const err = await work.then(
    () => undefined,
    (e: unknown) => e as Error,
  );
  if (!err) throw new Error('expected the match to fail');
  expect(err).toBeInstanceOf(GlobError);
  return err.message;
}

function syncFailure(work: () => unknown): GlobError {
  try {
    work();
  } catch (err) {
    expect(err).toBeInstanceOf(GlobError);
    return err as GlobError;
  }
  throw new Error('expected the match to fail');
}

describe('GlobMatcher', () => {
  it('selects what picomatch selects (dot: true), over a list longer than one VM call', async () => {
    const paths = Array.from({ length: 50_000 }, (_, i) => `${['src', 'dist', 'node_modules/p', '.cache'][i % 4]}/m${i % 7}/f${i}.${['ts', 'test.js', 'map', 'json'][i % 4]}`);
    for (const pattern of ['**/*', 'dist/**/*', '**/*.test.{js,ts}', '!(*.map)', '**/!(*.map)', 'src/*/f1*.ts', '.cache/**']) {
      const hit = await new GlobMatcher('artifacts').match(globs('artifacts.files', pattern), paths);
      const isMatch = picomatch(pattern, { dot: true });
      expect(paths.filter((_, i) => hit[i] === 1), pattern).toEqual(paths.filter((p) => isMatch(p)));
    }
  });

  it('matches a path when any of the globs does', async () => {
    const hit = await new GlobMatcher('artifacts').match(globs('artifacts.files', 'a/*', 'b/*'), ['a/1', 'b/2', 'c/3']);
    expect([...hit]).toEqual([1, 1, 0]);
  });

  it('a glob that backtracks catastrophically fails within its time, naming its field', async () => {
    const limits = { ...GLOB_LIMITS, perGlobMs: 200 };
    const started = performance.now();
    const message = await failure(new GlobMatcher('reports.unit', limits).match(globs('reports.unit.files', '**/*.xml', CATASTROPHIC), ['x.xml', VICTIM]));
    expect(message).toBe(`reports.unit.files[1]: the glob "${CATASTROPHIC}" took longer than 0.2 s to match; simplify it`);
    expect(performance.now() - started).toBeLessThan(5000);
  });

  it('all the globs of a section share one budget: past it, the glob that was running is named', async () => {
    const matcher = new GlobMatcher('artifacts', { ...GLOB_LIMITS, perGlobMs: 300, perSectionMs: 500 });
    expect(await failure(matcher.match(globs('artifacts.files', CATASTROPHIC), [VICTIM]))).toMatch(/^artifacts\.files\[0\]: .* took longer than 0\.3 s to match; simplify it$/);
    expect(await failure(matcher.match(globs('artifacts.exclude-paths', 'x', CATASTROPHIC), [VICTIM]))).toBe(
      'artifacts.exclude-paths[1]: the globs of artifacts took longer than 0.5 s in all to match; use fewer or simpler globs',
    );
  });
});

describe('checkGlobShape', () => {
  it('accepts ordinary globs', () => {
    for (const p of ['**/*', '**/*.test.{js,ts}', 'dist/**/*', '!(*.map)', 'src/**/@(a|b)/*.+(js|ts)', '{a,{b,{c,d}}}/**/[a-z]*.xml', 'x'.repeat(GLOB_LIMITS.maxLength)]) {
      expect(() => checkGlobShape(p, 'artifacts.files[0]'), p).not.toThrow();
    }
  });

  it('refuses a glob longer or more deeply nested than the limits (deep extglobs abort V8 compiling them)', () => {
    const deep = `${'!('.repeat(GLOB_LIMITS.maxNesting + 1)}a${')'.repeat(GLOB_LIMITS.maxNesting + 1)}`;
    expect(() => checkGlobShape(deep, 'artifacts.files[2]')).toThrow(/^artifacts\.files\[2\]: the glob nests \( and \{ groups 33 deep, more than the 32 allowed; simplify it$/);
    expect(() => checkGlobShape(`${'{a,'.repeat(33)}b${'}'.repeat(33)}`, 'f')).toThrow(/33 deep/);
    expect(syncFailure(() => checkGlobShape(deep, 'source.triggers.0.branches.include.0'))).toMatchObject({ field: 'source.triggers.0.branches.include.0', problem: 'the glob nests ( and { groups 33 deep, more than the 32 allowed; simplify it' });
    expect(() => checkGlobShape('\\('.repeat(40), 'f')).not.toThrow(); // escaped: not a group
    expect(() => checkGlobShape('x'.repeat(GLOB_LIMITS.maxLength + 1), 'reports.unit.files[0]')).toThrow(/^reports\.unit\.files\[0\]: the glob is 4097 characters long, more than the 4096 allowed$/);
  });

  it('measures the nesting on the regex the glob becomes: literal } or ) that close nothing do not hide it', () => {
    const disguised = `${'!(}'.repeat(1023)}a${')'.repeat(1023)}`;
    expect(disguised.length).toBeLessThanOrEqual(GLOB_LIMITS.maxLength);
    expect(() => checkGlobShape(disguised, 'artifacts.files[0]')).toThrow(/^artifacts\.files\[0\]: the glob's groups nest \d+ deep once compiled to a regex, more than the 100 allowed; simplify it$/);
    // As deep as the glob-level limit allows, it still passes.
    expect(() => checkGlobShape(`${'!('.repeat(GLOB_LIMITS.maxNesting)}a${')'.repeat(GLOB_LIMITS.maxNesting)}`, 'f')).not.toThrow();
  });

  it('refuses a glob picomatch cannot compile (it would silently match nothing)', () => {
    for (const p of ['[z-a]', '!(', 'src/{a,b']) {
      expect(syncFailure(() => checkGlobShape(p, 'source.triggers.0.filePaths.exclude.0')), p).toMatchObject({
        field: 'source.triggers.0.filePaths.exclude.0',
        problem: `"${p}" is not a glob that can be compiled (an unclosed bracket, brace or group, or a reversed range?)`,
      });
    }
  });
});

describe('GlobMatcher: the section budget', () => {
  it('counts the time spent matching, not what the caller spent meanwhile (walking the tree)', async () => {
    const matcher = new GlobMatcher('artifacts', { ...GLOB_LIMITS, perSectionMs: 200 });
    // A slow walk of a big tree between making the matcher and matching.
    await new Promise((r) => setTimeout(r, 400));
    const hit = await matcher.match([{ field: 'artifacts.files[0]', pattern: '**/*.js' }], ['a.js', 'b.txt', 'c/d.js']);
    expect([...hit]).toEqual([1, 0, 1]);
  });
});

describe('GlobMatcher.matchSync', () => {
  it('selects what match and picomatch (dot: true) select', async () => {
    const paths = ['src/a.ts', 'src/.hidden/b.ts', 'docs/x.md', '.github/workflows/ci.yml', 'release/1.2', 'release/old-1'];
    for (const pattern of ['**/*', 'src/**', '**/*.md', '.github/**', 'release/!(old-*)', '{src,docs}/*']) {
      const isMatch = picomatch(pattern, { dot: true });
      const sync = new GlobMatcher('triggers').matchSync(globs('branches.include', pattern), paths);
      expect([...sync], pattern).toEqual(paths.map((p) => (isMatch(p) ? 1 : 0)));
      expect([...sync], pattern).toEqual([...(await new GlobMatcher('triggers').match(globs('branches.include', pattern), paths))]);
    }
  });

  it('a glob that backtracks catastrophically fails within its time, naming its field', () => {
    const started = performance.now();
    const err = syncFailure(() => new GlobMatcher('source.triggers', { ...GLOB_LIMITS, perGlobMs: 100 }).matchSync(globs('filePaths.include', 'src/**', CATASTROPHIC), ['src/a', VICTIM]));
    expect(err.message).toBe(`filePaths.include[1]: the glob "${CATASTROPHIC}" took longer than 0.1 s to match; simplify it`);
    expect(err.field).toBe('filePaths.include[1]');
    expect(err.problem).toBe(`the glob "${CATASTROPHIC}" took longer than 0.1 s to match; simplify it`);
    expect(performance.now() - started).toBeLessThan(5000);
  });

  it('globs that together take longer than one glob may are tried one by one, and none is blamed', async () => {
    const paths = Array.from({ length: 20_000 }, (_, i) => `src/m${i % 50}/f${i}.${['ts', 'md', 'json'][i % 3]}`);
    const many = globs('filePaths.include', ...Array.from({ length: 100 }, (_, i) => `src/m${i}/**/*.{ts,json}`));
    // Warm: each glob then takes one or two milliseconds over these paths, all of them together far more than 50.
    const want = await new GlobMatcher('warm-up').match(many, paths);
    const hit = new GlobMatcher('source.triggers', { ...GLOB_LIMITS, perGlobMs: 50, perSectionMs: 60_000 }).matchSync(many, paths);
    expect([...hit]).toEqual([...want]);
    expect(hit.filter((h) => h === 1).length).toBe(13_333); // the .ts and .json files
  });

  it('shares the section budget with the matcher\'s other calls', () => {
    const matcher = new GlobMatcher('source.triggers', { ...GLOB_LIMITS, perGlobMs: 300, perSectionMs: 400 });
    expect(syncFailure(() => matcher.matchSync(globs('a', CATASTROPHIC), [VICTIM])).message).toMatch(/took longer than 0\.3 s to match/);
    expect(syncFailure(() => matcher.matchSync(globs('b', CATASTROPHIC), [VICTIM])).message).toBe('b[0]: the globs of source.triggers took longer than 0.4 s in all to match; use fewer or simpler globs');
  });
});
