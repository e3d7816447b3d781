import picomatch from 'picomatch';
import type { GlobFilter, PipelineDefinition, PushTrigger, SourceEvent } from '@conveyor/contracts';

export type TriggerDecision = { run: true } | { run: false; reason: string };

function matches(filter: GlobFilter | undefined, values: string[]): boolean {
  if (!filter) return true;
  const include = filter.include.length ? picomatch(filter.include, { dot: true }) : () => true;
  const exclude = filter.exclude.length ? picomatch(filter.exclude, { dot: true }) : () => false;
  return values.some((v) => include(v) && !exclude(v));
}

/** Whether `value` is refused by the filter's exclude globs (rather than missed by its include ones). */
function excludedBy(filter: GlobFilter, value: string): boolean {
  return filter.exclude.length > 0 && picomatch(filter.exclude, { dot: true })(value);
}

function triggerMatches(trigger: PushTrigger, event: SourceEvent): string | undefined {
  if (event.branch !== undefined) {
    if (!trigger.branches) return trigger.tags ? 'trigger filters tags, push is a branch' : undefined;
    if (!matches(trigger.branches, [event.branch])) return `branch ${event.branch} ${excludedBy(trigger.branches, event.branch) ? "excluded by the trigger's branch filter" : "not in the trigger's branch filter"}`;
  } else if (event.tag !== undefined) {
    if (!trigger.tags) return 'trigger filters branches, push is a tag';
    if (!matches(trigger.tags, [event.tag])) return `tag ${event.tag} ${excludedBy(trigger.tags, event.tag) ? "excluded by the trigger's tag filter" : "not in the trigger's tag filter"}`;
  }
  if (trigger.filePaths && event.changedFiles && !matches(trigger.filePaths, event.changedFiles)) {
    return 'no changed file matches the trigger\'s file path filter';
  }
  return undefined;
}

/**
 * CodePipeline V2 push-trigger semantics: the push runs the pipeline when any trigger matches.
 * Without triggers, pushes to the source branch do (the V1/V2 default).
 */
export function decideTrigger(def: PipelineDefinition, event: SourceEvent): TriggerDecision {
  if (event.deleted) return { run: false, reason: `ref ${event.ref} was deleted` };
  // Filters speak of branches and tags: a push to any other ref (refs/pull/…, refs/notes/…) runs nothing.
  if (event.branch === undefined && event.tag === undefined) return { run: false, reason: `ref ${event.ref} is neither a branch nor a tag` };
  const triggers: PushTrigger[] = def.source.triggers ?? [{ event: 'push', branches: { include: [def.source.branch], exclude: [] } }];
  if (triggers.length === 0) return { run: false, reason: 'the pipeline has no push triggers' };
  const reasons: string[] = [];
  for (const trigger of triggers) {
    const miss = triggerMatches(trigger, event);
    if (miss === undefined) return { run: true };
    reasons.push(miss);
  }
  return { run: false, reason: reasons.join('; ') };
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
