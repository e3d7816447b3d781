import { z } from 'zod';
import { parseOnFailure } from './on-failure.js';

/*
 * The buildspec is parsed with YAML's failsafe schema, so every scalar arrives as the string
 * written in the file ("1.10" stays "1.10", `yes` stays "yes"): that is how CodeBuild hands
 * numbers and booleans in commands and variables to the shell. Booleans are read from yes/no.
 * An empty value (`finally:`) arrives as "" and counts as absent where a key is optional.
 */

const emptyToUndefined = (v: unknown): unknown => (v === '' ? undefined : v);

/** An optional key whose empty value (`key:`) counts as absent. */
function opt<T extends z.ZodType>(schema: T) {
  return z.preprocess(emptyToUndefined, schema.optional()).optional();
}

/** Error text for a missing key or a value of the wrong shape. */
const expected = (what: string) => (issue: { input: unknown }) => (issue.input === undefined ? `required: ${what}` : `expected ${what}`);

const Str = z.string({ error: expected('a string') });

/** `- echo a: b` is a YAML mapping, not a string: the classic buildspec mistake, so say so. */
const Command = z.string({
  error: (issue) =>
    issue.input !== null && typeof issue.input === 'object' && !Array.isArray(issue.input)
      ? 'expected a string (a command containing ": " must be quoted)'
      : 'expected a string',
});
const Commands = z.array(Command, { error: expected('a list of commands') });

const YesNo = z.preprocess(
  (v) => (typeof v === 'string' ? v.toLowerCase() : v),
  z.enum(['yes', 'no', 'true', 'false', 'on', 'off'], { error: 'expected yes or no' }),
).transform((v) => v === 'yes' || v === 'true' || v === 'on');

/** A list of paths; a single string is taken as a list of one. */
const PathList = z.preprocess(
  (v) => (typeof v === 'string' && v !== '' ? [v] : v),
  z.array(Str, { error: expected('a list of paths') }).min(1, 'expected at least one path'),
);

const EnvName = z.string().regex(/^[^=\0]+$/, 'not a valid environment variable name');
const ShellName = z.string().regex(/^[A-Za-z_][A-Za-z0-9_]*$/, 'not a valid shell variable name');
const EnvValue = z.string({ error: 'expected a string value' }).refine((v) => !v.includes('\0'), 'must not contain NUL');

const Version = z
  .string({ error: 'expected 0.2' })
  .superRefine((v, ctx) => {
    const n = /^\d+(\.\d+)?$/.test(v.trim()) ? Number(v) : NaN;
    if (n === 0.1) ctx.addIssue({ code: 'custom', message: 'buildspec version 0.1 is not supported: Conveyor runs version 0.2 (one shell for the whole build)' });
    else if (n !== 0.2) ctx.addIssue({ code: 'custom', message: `must be 0.2, got "${v}"` });
  })
  .transform(() => '0.2' as const);

const OnFailure = z.string({ error: 'expected ABORT, CONTINUE or RETRY[-count][-regex]' }).superRefine((v, ctx) => {
  try {
    parseOnFailure(v);
  } catch (err) {
    ctx.addIssue({ code: 'custom', message: (err as Error).message });
  }
});

export const BuildspecEnv = z.strictObject(
  {
    shell: opt(z.enum(['bash', '/bin/sh', 'powershell.exe', 'cmd.exe'], { error: 'expected bash or /bin/sh' })),
    variables: opt(z.record(EnvName, EnvValue, { error: 'expected a mapping of names to values' })),
    'parameter-store': opt(z.record(EnvName, Str, { error: 'expected a mapping of names to parameter names' })),
    'secrets-manager': opt(z.record(EnvName, Str, { error: 'expected a mapping of names to secret references' })),
    'exported-variables': opt(z.array(ShellName, { error: 'expected a list of variable names' })),
    'git-credential-helper': opt(YesNo),
  },
  { error: 'expected a mapping' },
);

const phaseKeys = {
  'run-as': opt(Str),
  'on-failure': opt(OnFailure),
  commands: Commands,
  finally: opt(Commands),
};

/*
 * A phase that is there must run something: an empty one (`build:`), or one whose lists are empty, is
 * a mistake (a phase mis-indented, say) that would otherwise pass as a phase that SUCCEEDED, as an
 * empty `commands:` already is an error. Only install may run nothing, to carry runtime-versions.
 */
const emptyPhase = (what: string) => (issue: { input: unknown }) =>
  issue.input === '' ? `expected a mapping with ${what} (the phase is empty)` : `expected a mapping with ${what}`;

function runsSomething(what: string) {
  return (phase: { commands?: readonly string[] | undefined; finally?: readonly string[] | undefined; 'runtime-versions'?: Record<string, string> | undefined }, ctx: z.RefinementCtx) => {
    const count = (phase.commands?.length ?? 0) + (phase.finally?.length ?? 0) + Object.keys(phase['runtime-versions'] ?? {}).length;
    if (count === 0) ctx.addIssue({ code: 'custom', message: `runs nothing: expected at least one command in ${what}` });
  };
}

export const BuildspecPhase = z.strictObject(phaseKeys, { error: emptyPhase('commands') }).superRefine(runsSomething('commands or finally'));
export type BuildspecPhase = z.infer<typeof BuildspecPhase>;
/** install alone may omit commands and carry runtime-versions. */
export const InstallPhase = z
  .strictObject(
    {
      ...phaseKeys,
      commands: opt(Commands),
      'runtime-versions': opt(z.record(z.string(), Str, { error: 'expected a mapping of runtime: version' })),
    },
    { error: emptyPhase('commands, finally or runtime-versions') },
  )
  .superRefine(runsSomething('commands or finally, or runtime-versions'));

/** A phase key may be left out, but not left empty (`build:` with nothing under it). */
export const BuildspecPhases = z
  .strictObject(
    { install: InstallPhase.optional(), pre_build: BuildspecPhase.optional(), build: BuildspecPhase.optional(), post_build: BuildspecPhase.optional() },
    { error: expected('a mapping of phases') },
  )
  .superRefine((phases, ctx) => {
    if (Object.values(phases).every((p) => p === undefined)) ctx.addIssue({ code: 'custom', message: 'expected at least one phase (install, pre_build, build or post_build)' });
  });

export const REPORT_FORMATS = [
  'JUNITXML', 'CUCUMBERJSON', 'NUNITXML', 'NUNIT3XML', 'TESTNGXML', 'VISUALSTUDIOTRX',
  'CLOVERXML', 'COBERTURAXML', 'JACOCOXML', 'SIMPLECOV',
] as const;

export const BuildspecReport = z.strictObject(
  {
    files: PathList,
    'base-directory': opt(Str),
    'discard-paths': opt(YesNo),
    'file-format': opt(
      z.preprocess((v) => (typeof v === 'string' ? v.toUpperCase() : v), z.enum(REPORT_FORMATS, { error: `expected one of ${REPORT_FORMATS.join(', ')}` })),
    ),
  },
  { error: 'expected a mapping with files' },
);
export type BuildspecReport = z.infer<typeof BuildspecReport>;

const artifactKeys = {
  files: PathList,
  name: opt(Str),
  'discard-paths': opt(YesNo),
  'base-directory': opt(Str),
  'exclude-paths': opt(PathList),
  'enable-symlinks': opt(YesNo),
  's3-prefix': opt(Str),
};
export const BuildspecArtifacts = z.strictObject(
  {
    ...artifactKeys,
    'secondary-artifacts': opt(z.record(z.string(), z.strictObject(artifactKeys, { error: 'expected a mapping with files' }))),
  },
  { error: 'expected a mapping with files' },
);
export type BuildspecArtifacts = z.infer<typeof BuildspecArtifacts>;

/** Sections we do not run yet: their shape is checked loosely, their presence reported by unsupportedFeatures. */
const Opaque = z.record(z.string(), z.unknown(), { error: 'expected a mapping' });

/** A parsed buildspec, version 0.2, with YAML's key names. Produced by parseBuildspec. */
export const Buildspec = z.strictObject(
  {
    version: Version,
    'run-as': opt(Str),
    env: opt(BuildspecEnv),
    proxy: opt(z.strictObject({ 'upload-artifacts': opt(YesNo), logs: opt(YesNo) }, { error: 'expected a mapping' })),
    batch: opt(Opaque),
    phases: BuildspecPhases,
    reports: opt(z.record(z.string(), BuildspecReport, { error: 'expected a mapping of report groups' })),
    artifacts: opt(BuildspecArtifacts),
    cache: opt(Opaque),
  },
  { error: 'expected a mapping' },
);
export type Buildspec = z.infer<typeof Buildspec>;

export const PHASE_NAMES = ['install', 'pre_build', 'build', 'post_build'] as const;
export type PhaseName = (typeof PHASE_NAMES)[number];
