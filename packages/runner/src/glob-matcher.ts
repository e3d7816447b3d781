import { setImmediate as nextTurn } from 'node:timers/promises';
import { createContext, Script, type Context } from 'node:vm';
import picomatch from 'picomatch';
import { FileSelectionError } from './file-selection-error.js';

/**
 * What the globs of one `artifacts` or `reports.<group>` section may cost. picomatch compiles a glob
 * into a backtracking regex; glob and file names both come from the build, and
 * `*a*a*a*a*a*a*a*a*a*a*b` against a file named `a`×120 backtracks for hours in the service's only
 * JS thread (no lock renewals, no /healthz). So matching runs in a VM call with a time limit.
 */
export const GLOB_LIMITS = {
  /** Compiling one glob and matching it against every path. */
  perGlobMs: 2_000,
  /** All the globs of one section together: base-directory, files and exclude-paths. */
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

/** One glob and the buildspec field that holds it, e.g. `artifacts.files[0]`. */
export interface Glob {
  field: string;
  pattern: string;
}

/** Paths matched per VM call: between calls the event loop gets a turn (lock renewals, /healthz). */
const CHUNK = 20_000;

interface Job {
  pattern: string;
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
    job.isMatch = picomatch(job.pattern, { dot: true });
  },
  scan(job: Job): void {
    const { isMatch, paths, out, to } = job;
    for (let i = job.from; i < to; i++) if (out[i] === 0 && isMatch!(paths[i]!)) out[i] = 1;
  },
};
type Step = keyof typeof steps;
const SCRIPT = new Script('steps[step](job)');
/** Making a context costs about a millisecond: one serves every matcher (each call sets its own job). */
let context: Context | undefined;

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
    throw new FileSelectionError(`${field}: the glob is ${pattern.length} characters long, more than the ${GLOB_LIMITS.maxLength} allowed`);
  }
  const depth = nesting(pattern);
  if (depth > GLOB_LIMITS.maxNesting) {
    throw new FileSelectionError(`${field}: the glob nests ( and { groups ${depth} deep, more than the ${GLOB_LIMITS.maxNesting} allowed; simplify it`);
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
    throw new FileSelectionError(`${field}: the glob's groups nest ${compiled} deep once compiled to a regex, more than the ${GLOB_LIMITS.maxRegexNesting} allowed; simplify it`);
  }
}

/**
 * Matches the globs of one section (CodeBuild semantics: picomatch with `dot: true`) within
 * GLOB_LIMITS. Each glob is compiled and run over the paths inside a time-limited VM call (several
 * for long lists), so a catastrophic glob fails the build with a FileSelectionError naming it.
 */
export class GlobMatcher {
  /** Time spent matching so far, in ms: the section's budget counts this alone (not walking the tree). */
  private sectionSpent = 0;

  constructor(
    private readonly section: string,
    private readonly limits: GlobLimits = GLOB_LIMITS,
  ) {}

  /** One byte per path: 1 where at least one of the globs matches it. */
  async match(globs: readonly Glob[], paths: readonly string[]): Promise<Uint8Array> {
    const out = new Uint8Array(paths.length);
    for (const glob of globs) await this.matchOne(glob, paths, out);
    return out;
  }

  /** The items whose path (`path(item)`) one of the globs matches. */
  async select<T>(globs: readonly Glob[], items: readonly T[], path: (item: T) => string): Promise<T[]> {
    if (globs.length === 0) return [];
    const hit = await this.match(globs, items.map(path));
    return items.filter((_, i) => hit[i] === 1);
  }

  private async matchOne(glob: Glob, paths: readonly string[], out: Uint8Array): Promise<void> {
    const job: Job = { pattern: glob.pattern, paths, out, from: 0, to: 0 };
    let spent = this.run('compile', glob, job, 0);
    for (let from = 0; from < paths.length; from += CHUNK) {
      if (from > 0) await nextTurn();
      job.from = from;
      job.to = Math.min(paths.length, from + CHUNK);
      spent += this.run('scan', glob, job, spent);
    }
  }

  /** Runs one step within what is left of the glob's and the section's time; returns the ms it took. */
  private run(step: Step, glob: Glob, job: Job, spent: number): number {
    const forGlob = this.limits.perGlobMs - spent;
    const forSection = this.limits.perSectionMs - this.sectionSpent;
    const start = performance.now();
    try {
      if (Math.min(forGlob, forSection) < 1) throw Object.assign(new Error('no time left'), { code: 'ERR_SCRIPT_EXECUTION_TIMEOUT' });
      context ??= createContext({ steps });
      Object.assign(context, { step, job });
      SCRIPT.runInContext(context, { timeout: Math.ceil(Math.min(forGlob, forSection)) });
    } catch (err) {
      throw this.failure(err, step, glob, forGlob <= forSection);
    } finally {
      if (context) context.job = undefined; // the paths are not kept alive by the shared context
      this.sectionSpent += performance.now() - start;
    }
    return performance.now() - start;
  }

  private failure(err: unknown, step: Step, glob: Glob, globLimited: boolean): Error {
    const { code, message } = err as { code?: string; message?: string };
    if (code === 'ERR_SCRIPT_EXECUTION_TIMEOUT') {
      if (globLimited) return new FileSelectionError(`${glob.field}: the glob "${shown(glob.pattern)}" took longer than ${seconds(this.limits.perGlobMs)} to match; simplify it`);
      return new FileSelectionError(`${glob.field}: the globs of ${this.section} took longer than ${seconds(this.limits.perSectionMs)} in all to match; use fewer or simpler globs`);
    }
    // picomatch refuses some globs (an invalid regex, say); anything else is a bug of ours.
    return step === 'compile' ? new FileSelectionError(`${glob.field}: "${shown(glob.pattern)}" is not a glob that can be compiled: ${message}`) : (err as Error);
  }
}
