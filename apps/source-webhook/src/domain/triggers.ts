import { checkGlobShape, GlobError, GlobMatcher, type Glob, type GlobTimeLimits } from '@conveyor/globs';
import { issuePath, type GlobFilter, type PipelineDefinition, type SourceEvent } from '@conveyor/contracts';

export type TriggerDecision = { run: true } | { run: false; reason: string };

/**
 * What a pipeline's trigger globs may cost for one delivery. Token holders write the globs, and the
 * ref and changed files come with a signed push: picomatch's backtracking regexes would run for
 * minutes on `*a*a*a*a*a*a*a*a*a*a*b` against a name of `a`×120, in the control plane's only JS
 * thread (every pipeline's API and webhooks). An ordinary glob takes microseconds against a ref and
 * about a millisecond against two thousand changed files. The limits are wall-clock time, and a push
 * refused for time is not run (the decision is recorded): they are set far above what any ordinary glob
 * needs, so that a loaded machine (GC, builds on the same cores) never makes one look slow, while
 * still bounding how long one delivery holds the thread for each pipeline.
 */
export const TRIGGER_GLOB_LIMITS: GlobTimeLimits = { perGlobMs: 500, perSectionMs: 2_000 };

/** A filter's globs, each named by its field (`source.triggers.0.filePaths.include.1`). */
interface Filter {
  include: Glob[];
  exclude: Glob[];
}
type TriggerFilters = Partial<Record<'branches' | 'tags' | 'filePaths', Filter>>;

function filterOf(filter: GlobFilter | undefined, at: readonly PropertyKey[]): Filter | undefined {
  if (!filter) return undefined;
  const globs = (side: 'include' | 'exclude') => filter[side].map((pattern, i) => ({ field: issuePath([...at, side, i]), pattern }));
  return { include: globs('include'), exclude: globs('exclude') };
}

/** The push triggers with their globs named; without triggers, pushes to the source branch (the V1/V2 default). */
function triggersOf(def: PipelineDefinition): TriggerFilters[] {
  if (!def.source.triggers) return [{ branches: { include: [{ field: 'source.branch', pattern: def.source.branch }], exclude: [] } }];
  return def.source.triggers.map((t, i) => {
    const at = ['source', 'triggers', i];
    const filters: TriggerFilters = {};
    for (const name of ['branches', 'tags', 'filePaths'] as const) {
      const filter = filterOf(t[name], [...at, name]);
      if (filter) filters[name] = filter;
    }
    return filters;
  });
}

/*
 * The two functions below throw a GlobError for a glob that takes too long, or that its shape refuses
 * (a definition stored before shapes were checked when it was defined).
 */

/** Whether some value passes the filter: an include glob matches it and no exclude glob does. */
function passes(matcher: GlobMatcher, filter: Filter, values: readonly string[]): boolean {
  for (const g of [...filter.include, ...filter.exclude]) checkGlobShape(g.pattern, g.field);
  const hit = filter.include.length > 0 ? matcher.matchSync(filter.include, values) : undefined;
  const included = hit ? values.filter((_, i) => hit[i] === 1) : values;
  if (included.length === 0 || filter.exclude.length === 0) return included.length > 0;
  return matcher.matchSync(filter.exclude, included).includes(0);
}

/** Whether the filter's exclude globs refuse `value` (rather than its include globs missing it). */
function excludes(matcher: GlobMatcher, filter: Filter, value: string): boolean {
  return filter.exclude.length > 0 && matcher.matchSync(filter.exclude, [value])[0] === 1;
}

function triggerMatches(trigger: TriggerFilters, event: SourceEvent, matcher: GlobMatcher): string | undefined {
  if (event.branch !== undefined) {
    // A trigger that filters neither branches nor tags takes any branch (its file paths still apply).
    if (!trigger.branches && trigger.tags) return 'trigger filters tags, push is a branch';
    if (trigger.branches && !passes(matcher, trigger.branches, [event.branch])) {
      return `branch ${event.branch} ${excludes(matcher, trigger.branches, event.branch) ? "excluded by the trigger's branch filter" : "not in the trigger's branch filter"}`;
    }
  } else if (event.tag !== undefined) {
    if (!trigger.tags) return trigger.branches ? 'trigger filters branches, push is a tag' : 'trigger has no tag filter, push is a tag';
    if (!passes(matcher, trigger.tags, [event.tag])) {
      return `tag ${event.tag} ${excludes(matcher, trigger.tags, event.tag) ? "excluded by the trigger's tag filter" : "not in the trigger's tag filter"}`;
    }
  }
  if (trigger.filePaths && event.changedFiles && !passes(matcher, trigger.filePaths, event.changedFiles)) {
    return 'no changed file matches the trigger\'s file path filter';
  }
  return undefined;
}

/**
 * CodePipeline V2 push-trigger semantics: the push runs the pipeline when any trigger matches.
 * Without triggers, pushes to the source branch do (the V1/V2 default). Globs are matched as picomatch
 * with `dot: true` within `limits`: a trigger whose glob takes too long, or is refused, does not
 * match, and the reason names the glob's field.
 */
export function decideTrigger(def: PipelineDefinition, event: SourceEvent, limits: GlobTimeLimits = TRIGGER_GLOB_LIMITS): TriggerDecision {
  if (event.deleted) return { run: false, reason: `ref ${event.ref} was deleted` };
  // Filters speak of branches and tags: a push to any other ref (refs/pull/…, refs/notes/…) runs nothing.
  if (event.branch === undefined && event.tag === undefined) return { run: false, reason: `ref ${event.ref} is neither a branch nor a tag` };
  const triggers = triggersOf(def);
  if (triggers.length === 0) return { run: false, reason: 'the pipeline has no push triggers' };
  const matcher = new GlobMatcher('source.triggers', limits);
  const reasons: string[] = [];
  for (const trigger of triggers) {
    let miss: string | undefined;
    try {
      miss = triggerMatches(trigger, event, matcher);
    } catch (err) {
      // This trigger's glob failed: it is this trigger's miss, and the next ones are still tried (within
      // what is left of the budget).
      if (!(err instanceof GlobError)) throw err;
      miss = err.message;
    }
    if (miss === undefined) return { run: true };
    reasons.push(miss);
  }
  return { run: false, reason: reasons.join('; ') };
}

/**
 * The definition's trigger globs that checkGlobShape refuses (too long, nested too deep to compile
 * safely, or not compilable at all), as issues naming their fields like the definition's other errors do.
 */
export function triggerGlobIssues(def: PipelineDefinition): Array<{ path: string; message: string }> {
  const issues: Array<{ path: string; message: string }> = [];
  for (const trigger of triggersOf(def)) {
    for (const filter of [trigger.branches, trigger.tags, trigger.filePaths]) {
      for (const g of filter ? [...filter.include, ...filter.exclude] : []) {
        try {
          checkGlobShape(g.pattern, g.field);
        } catch (err) {
          if (!(err instanceof GlobError)) throw err;
          issues.push({ path: err.field, message: err.problem });
        }
      }
    }
  }
  return issues;
}

/** `refs/heads/x` → { branch: x }, `refs/tags/x` → { tag: x }. */
export function splitRef(ref: string): { branch?: string; tag?: string } {
  if (ref.startsWith('refs/heads/')) return { branch: ref.slice('refs/heads/'.length) };
  if (ref.startsWith('refs/tags/')) return { tag: ref.slice('refs/tags/'.length) };
  return {};
}

/** One spelling for the many ways to write a repository's address, so webhooks find their pipeline. */
export function normalizeRepositoryUrl(url: string): string {
  let s = url.trim();
  const scp = /^[\w.-]+@([^:/]+):(.+)$/.exec(s);
  if (scp) s = `${scp[1]}/${scp[2]}`;
  else if (s.startsWith('file://')) s = s.slice('file://'.length);
  else s = s.replace(/^[a-z+]+:\/\/(?:[^@/]*@)?/i, '');
  s = s.replace(/\/+$/, '').replace(/\.git$/, '');
  const slash = s.indexOf('/');
  return slash > 0 && !url.startsWith('file://') ? s.slice(0, slash).toLowerCase() + s.slice(slash) : s;
}
