import { z } from 'zod';
import { CommitSha, GitRefName } from './common.js';

/** Body of `POST /api/v1/pipelines/:name/runs` (all optional). */
export const StartRunBody = z
  .object({ ref: GitRefName.optional(), commit: CommitSha.optional() })
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
