import { z } from 'zod';
import { CommitSha, GitRefName } from './common.js';
import { EnvValue, VariableName } from './pipeline.js';

/**
 * Body of `POST /api/v1/pipelines/:name/runs` (all optional). `variables` sets the pipeline's declared
 * variables for this run, as CodePipeline's StartPipelineExecution does: `[{ name, value }]`.
 */
export const StartRunBody = z
  .object({
    ref: GitRefName.optional(),
    commit: CommitSha.optional(),
    variables: z
      .array(z.object({ name: VariableName, value: EnvValue.min(1).max(1000) }).strict())
      .max(50)
      .superRefine((vars, ctx) => {
        const seen = new Set<string>();
        vars.forEach((v, i) => {
          if (seen.has(v.name)) ctx.addIssue({ code: 'custom', path: [i, 'name'], message: `"${v.name}" given twice` });
          seen.add(v.name);
        });
      })
      .optional(),
  })
  .strict()
  .default({});
export type StartRunBody = z.infer<typeof StartRunBody>;

/** RFC 9457 problem details, the body of every 4xx/5xx. */
export const Problem = z.object({
  type: z.string(),
  title: z.string(),
  status: z.number().int(),
  detail: z.string().optional(),
  errors: z.array(z.object({ path: z.string(), message: z.string() })).optional(),
});
export type Problem = z.infer<typeof Problem>;
