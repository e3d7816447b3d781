import { setImmediate as nextTurn } from 'node:timers/promises';
import { createContext, Script, type Context } from 'node:vm';
import picomatch from 'picomatch';
import { GlobError } from './glob-error.js';

/**
 * What the globs of one section may cost; these defaults are the builds' (an `artifacts` or
 * `reports.<group>` section), other users pass their own times. picomatch compiles a glob into a
 * backtracking regex; where globs and names come from users, `*a*a*a*a*a*a*a*a*a*a*b` against a name
 * of `a`×120 backtracks for hours in the service's only JS thread (no lock renewals, no /healthz, no
 * API). So matching runs in a VM call with a time limit.
 */
export const GLOB_LIMITS = {
  /** Compiling one glob and matching it against every path. */
  perGlobMs: 2_000,
  /** All the globs of one section (one GlobMatcher) together: for a build, base-directory, files and exclude-paths. */
  perSectionMs: 10_000,
  /** Characters in one glob. */
  maxLength: 4_096,
  /**
   * Depth of nested `(` and `{` groups. Not a matter of time: a few thousand nested extglobs
   * (`!(!(…))`) make V8's regex compiler run out of memory, which aborts the process.
   */
  maxNesting: 32,
  /**
   * Depth of groups in the regex picomatch makes of the glob (about 3 per extglob level): a check of the
   * glob's own brackets alone is fooled by literal `}` or `)` that close nothing.
   */
  maxRegexNesting: 100,
};
export type GlobLimits = typeof GLOB_LIMITS;
/** What a matcher may spend: the shape limits are checkGlobShape's, the same for every caller. */
export type GlobTimeLimits = Pick<GlobLimits, 'perGlobMs' | 'perSectionMs'>;

/** One glob and the field that holds it, e.g. `artifacts.files[0]`. */
export interface Glob {
  field: string;
  pattern: string;
}

/** Paths matched per VM call by `match`: between calls the event loop gets a turn (lock renewals, /healthz). */
const CHUNK = 20_000;

interface Job {
  globs: readonly Glob[];
  /** The glob being matched (its index in `globs`): the one named if the call fails. */
  current: number;
  /** The current glob compiled; undefined until it is. */
  isMatch?: (path: string) => boolean;
  paths: readonly string[];
  /** 1 where a glob matched: a path already matched is not tried again. */
  out: Uint8Array;
  from: number;
  to: number;
}

/*
 * A VM call's timeout interrupts whatever JS runs during the call, these functions of ours and
 * picomatch's regexes included. The script only calls them: no per-path call crosses contexts.
 */
const steps = {
  compile(job: Job): void {
    job.isMatch = undefined;
    job.isMatch = picomatch(job.globs[job.current]!.pattern, { dot: true });
  },
  scan(job: Job): void {
    const { isMatch, paths, out, to } = job;
    for (let i = job.from; i < to; i++) if (out[i] === 0 && isMatch!(paths[i]!)) out[i] = 1;
  },
  /** The current glob over all paths, in one call. */
  compileAndScan(job: Job): void {
    steps.compile(job);
    steps.scan(job);
  },
  /**
   * Every glob from the current one on, in one call: a call with a timeout costs 0.1-0.2 ms (it starts
   * a watchdog thread), more than matching an ordinary glob against a few thousand names.
   */
  compileAndScanEach(job: Job): void {
    for (; job.current < job.globs.length; job.current++) steps.compileAndScan(job);
  },
};
/** Thrown by `run` when several globs in one call ran out of one glob's time: each is tried alone. */
const TRY_ALONE = Symbol('try each glob alone');
type Step = keyof typeof steps;
const SCRIPT = new Script('steps[step](job)');
/** Making a context costs about a millisecond: one serves every matcher (each call sets its own job). */
let context: Context | undefined;

const TIMEOUT = 'ERR_SCRIPT_EXECUTION_TIMEOUT';
const seconds = (ms: number) => `${ms / 1000} s`;
const shown = (pattern: string) => (pattern.length > 80 ? `${pattern.slice(0, 80)}…` : pattern);

function nesting(pattern: string): number {
  let depth = 0;
  let max = 0;
  for (let i = 0; i < pattern.length; i++) {
    const c = pattern[i];
    if (c === '\\') i++;
    else if (c === '(' || c === '{') max = Math.max(max, ++depth);
    else if ((c === ')' || c === '}') && depth > 0) depth--;
  }
  return max;
}

/** Depth of `(` groups in a regex's source (escapes and character classes skipped). */
function regexNesting(source: string): number {
  let depth = 0;
  let max = 0;
  let inClass = false;
  for (let i = 0; i < source.length; i++) {
    const c = source[i];
    if (c === '\\') i++;
    else if (inClass) inClass = c !== ']';
    else if (c === '[') inClass = true;
    else if (c === '(') max = Math.max(max, ++depth);
    else if (c === ')' && depth > 0) depth--;
  }
  return max;
}

/** Refuses, naming the field, a glob longer or more deeply nested than the limits allow. */
export function checkGlobShape(pattern: string, field: string): void {
  if (pattern.length > GLOB_LIMITS.maxLength) {
    throw new GlobError(field, `the glob is ${pattern.length} characters long, more than the ${GLOB_LIMITS.maxLength} allowed`);
  }
  const depth = nesting(pattern);
  if (depth > GLOB_LIMITS.maxNesting) {
    throw new GlobError(field, `the glob nests ( and { groups ${depth} deep, more than the ${GLOB_LIMITS.maxNesting} allowed; simplify it`);
  }
  // The regex's source, not yet compiled (V8 compiling one nested thousands deep aborts the process). A
  // glob picomatch cannot parse is left to the compile step, which names it.
  let source: string | undefined;
  try {
    // picomatch's typings list only maxLength among parse's options; it takes all of picomatch's.
    source = (picomatch.parse as (glob: string, options: picomatch.PicomatchOptions) => { output: string })(pattern, { dot: true }).output;
  } catch {
    source = undefined;
  }
  const compiled = source === undefined ? 0 : regexNesting(source);
  if (compiled > GLOB_LIMITS.maxRegexNesting) {
    throw new GlobError(field, `the glob's groups nest ${compiled} deep once compiled to a regex, more than the ${GLOB_LIMITS.maxRegexNesting} allowed; simplify it`);
  }
  // picomatch does not throw for a glob it cannot turn into a regex (`[z-a]`, `!(`, `{a,b`): it matches
  // nothing with it, which would make an exclude glob exclude nothing without a word.
  if (picomatch.makeRe(pattern, { dot: true }).source === NEVER_MATCHES) {
    throw new GlobError(field, `"${shown(pattern)}" is not a glob that can be compiled (an unclosed bracket, brace or group, or a reversed range?)`);
  }
}

/** The regex picomatch falls back to when a glob's regex does not compile. */
const NEVER_MATCHES = new RegExp('$^').source;

/**
 * Matches the globs of one section (picomatch with `dot: true`, CodeBuild's semantics) within its
 * limits. Each glob is compiled and run over the paths inside a time-limited VM call (several for long
 * lists with `match`), so a catastrophic glob ends in a GlobError naming its field.
 */
export class GlobMatcher {
  /** Time spent matching so far, in ms: the section's budget counts this alone (not walking the tree). */
  private sectionSpent = 0;

  constructor(
    private readonly section: string,
    private readonly limits: GlobTimeLimits = GLOB_LIMITS,
  ) {}

  /** One byte per path: 1 where at least one of the globs matches it. */
  async match(globs: readonly Glob[], paths: readonly string[]): Promise<Uint8Array> {
    const job: Job = { globs, current: 0, paths, out: new Uint8Array(paths.length), from: 0, to: 0 };
    for (; job.current < globs.length; job.current++) await this.matchOne(job);
    return job.out;
  }

  /**
   * `match` without yielding, for a few thousand paths at most (push trigger filters): it holds the
   * event loop for up to the section's time, which such callers keep small. All the globs go in one VM
   * call; if that runs out of one glob's time, the glob it was on and those after it go one a call, so
   * that a glob is blamed only for what it takes alone.
   */
  matchSync(globs: readonly Glob[], paths: readonly string[]): Uint8Array {
    const job: Job = { globs, current: 0, paths, out: new Uint8Array(paths.length), from: 0, to: paths.length };
    try {
      if (globs.length > 1) this.run('compileAndScanEach', job, 0, true);
    } catch (err) {
      if (err !== TRY_ALONE) throw err;
    }
    for (; job.current < globs.length; job.current++) this.run('compileAndScan', job, 0);
    return job.out;
  }

  /** The items whose path (`path(item)`) one of the globs matches. */
  async select<T>(globs: readonly Glob[], items: readonly T[], path: (item: T) => string): Promise<T[]> {
    if (globs.length === 0) return [];
    const hit = await this.match(globs, items.map(path));
    return items.filter((_, i) => hit[i] === 1);
  }

  private async matchOne(job: Job): Promise<void> {
    let spent = this.run('compile', job, 0);
    for (let from = 0; from < job.paths.length; from += CHUNK) {
      if (from > 0) await nextTurn();
      job.from = from;
      job.to = Math.min(job.paths.length, from + CHUNK);
      spent += this.run('scan', job, spent);
    }
  }

  /**
   * Runs one step within what is left of the current glob's and the section's time; returns the ms it
   * took. `several`: the step runs several globs, and running out of one glob's time throws TRY_ALONE.
   */
  private run(step: Step, job: Job, spent: number, several = false): number {
    const forGlob = this.limits.perGlobMs - spent;
    const forSection = this.limits.perSectionMs - this.sectionSpent;
    const start = performance.now();
    try {
      if (Math.min(forGlob, forSection) < 1) throw Object.assign(new Error('no time left'), { code: TIMEOUT });
      context ??= createContext({ steps });
      Object.assign(context, { step, job });
      SCRIPT.runInContext(context, { timeout: Math.ceil(Math.min(forGlob, forSection)) });
    } catch (err) {
      const globLimited = forGlob <= forSection;
      if (several && globLimited && (err as { code?: string }).code === TIMEOUT) throw TRY_ALONE;
      throw this.failure(err, job, globLimited);
    } finally {
      if (context) context.job = undefined; // the paths are not kept alive by the shared context
      this.sectionSpent += performance.now() - start;
    }
    return performance.now() - start;
  }

  private failure(err: unknown, job: Job, globLimited: boolean): Error {
    // Past the last glob when the time ran out just as the call ended: the last one is named.
    const glob = job.globs[Math.min(job.current, job.globs.length - 1)]!;
    const { code, message } = err as { code?: string; message?: string };
    if (code === TIMEOUT) {
      if (globLimited) return new GlobError(glob.field, `the glob "${shown(glob.pattern)}" took longer than ${seconds(this.limits.perGlobMs)} to match; simplify it`);
      return new GlobError(glob.field, `the globs of ${this.section} took longer than ${seconds(this.limits.perSectionMs)} in all to match; use fewer or simpler globs`);
    }
    // picomatch refuses some globs (an invalid regex, say); anything else is a bug of ours.
    return job.isMatch === undefined ? new GlobError(glob.field, `"${shown(glob.pattern)}" is not a glob that can be compiled: ${message}`) : (err as Error);
  }
}
