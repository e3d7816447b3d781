import { z } from 'zod';

/** Every message kind carries its contract version; changes are additive within a version. */
export const ContractVersion = z.literal(1);

export const PipelineName = z.string().regex(/^[a-z0-9][a-z0-9-]{0,62}$/, 'must match ^[a-z0-9][a-z0-9-]{0,62}$');
export type PipelineName = z.infer<typeof PipelineName>;

/** Stage names appear inside job ids (`<runId>.<stage>.<attempt>`), so no dots or colons. */
export const StageName = z
  .string()
  .regex(/^[A-Za-z][A-Za-z0-9_-]{0,63}$/, 'must match ^[A-Za-z][A-Za-z0-9_-]{0,63}$');
export type StageName = z.infer<typeof StageName>;

/**
 * A branch or ref name as `git check-ref-format` takes it (its rules, checked here so a bad one is a 400
 * naming the field, not a run that fails at Source): no control characters, spaces or ~^:?*[\, no `..`,
 * `@{`, `//`, no part starting with `.` or ending with `.lock`, not starting with `-` or `/`, not
 * ending with `/` or `.`, not `@`.
 */
export const GitRefName = z
  .string()
  .min(1)
  .max(255)
  .refine(
    (r) =>
      !/[\x00-\x20\x7f~^:?*[\\]/.test(r) &&
      !r.includes('..') &&
      !r.includes('@{') &&
      !r.includes('//') &&
      !/^[-/]/.test(r) &&
      !/[/.]$/.test(r) &&
      r !== '@' &&
      r.split('/').every((part) => !part.startsWith('.') && !part.endsWith('.lock')),
    'not a valid git ref name (see git check-ref-format)',
  );

export const RunId = z.string().regex(/^[a-z0-9][a-z0-9-]{7,80}$/, 'not a run id');
export type RunId = z.infer<typeof RunId>;

const JOB_ID = /^[a-z0-9-]+\.[A-Za-z][A-Za-z0-9_-]*\.[0-9]+$/;
/** Deterministic BullMQ job id: `<runId>.<stage>.<attempt>` (BullMQ forbids `:`). */
export const JobId = z.string().regex(JOB_ID, 'not a job id');
export type JobId = z.infer<typeof JobId>;

export const CommitSha = z.string().regex(/^[0-9a-f]{40}([0-9a-f]{24})?$/, 'not a full commit sha');
export type CommitSha = z.infer<typeof CommitSha>;

/**
 * Stored JSON read back as `schema` says: undefined when it is absent, not JSON, or not of the schema.
 * What comes out of Redis or off a disk is never trusted.
 */
export function parseJsonAs<S extends z.ZodType>(schema: S, text: string | null | undefined): z.output<S> | undefined {
  if (text === null || text === undefined) return undefined;
  try {
    const parsed = schema.safeParse(JSON.parse(text));
    return parsed.success ? parsed.data : undefined;
  } catch {
    return undefined;
  }
}

/**
 * A zod error in one line naming each field: `status: Invalid option; output.url: Expected string`.
 * `at` names where the parsed value sits in a larger one (e.g. `output`).
 */
export function describeIssues(error: z.ZodError, at?: string): string {
  return error.issues.map((i) => `${issuePath(i.path, at)}: ${i.message}`).join('; ');
}

/** Where an issue is, dotted (`body.stages.0.name`), under `at` when given; `(root)` for the value itself. */
export function issuePath(path: readonly PropertyKey[], at?: string): string {
  return [at, ...path.map(String)].filter(Boolean).join('.') || '(root)';
}

export const IsoTime = z.iso.datetime({ offset: true });

/** A stored artifact. The key is store-relative; which store (directory, S3) is deployment config. */
export const ArtifactRef = z.object({
  key: z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._/-]*$/).refine((k) => !k.split('/').includes('..'), 'no ..'),
  sha256: z.string().regex(/^[0-9a-f]{64}$/),
  bytes: z.number().int().nonnegative(),
});
export type ArtifactRef = z.infer<typeof ArtifactRef>;

export const StageType = z.enum(['source', 'build', 'test', 'deploy', 'monitor']);
export type StageType = z.infer<typeof StageType>;

export function stageJobId(runId: string, stage: string, attempt: number): string {
  return `${runId}.${stage}.${attempt}`;
}

/** The run a stage job id belongs to, or undefined when the id is not a stage job id. */
export function runIdOfJob(jobId: string): string | undefined {
  return JOB_ID.test(jobId) ? jobId.slice(0, jobId.indexOf('.')) : undefined;
}
