import { z } from 'zod';
import { CommitSha, GitRefName } from './common.js';

/** Produced by source-webhook from a verified Git host delivery: a push, independent of the host's format. */
export const SourceEvent = z
  .object({
    v: z.literal(1),
    provider: z.enum(['github', 'generic']),
    event: z.literal('push'),
    deliveryId: z.string().min(1).max(200),
    repositoryUrls: z.array(z.string()).min(1),
    ref: GitRefName,
    /** `refs/heads/x` → branch x; `refs/tags/x` → tag x. */
    branch: z.string().optional(),
    tag: z.string().optional(),
    before: z.string().optional(),
    after: CommitSha,
    deleted: z.boolean().default(false),
    changedFiles: z.array(z.string()).optional(),
    actor: z.string().optional(),
  })
  .strict();
export type SourceEvent = z.infer<typeof SourceEvent>;

/** Why a run exists. Recorded on the run; turned into CODEBUILD_* variables for builds. */
export const Trigger = z
  .object({
    type: z.enum(['webhook', 'manual']),
    ref: z.string().min(1),
    commit: CommitSha.optional(),
    deliveryId: z.string().optional(),
    provider: z.enum(['github', 'generic']).optional(),
    actor: z.string().optional(),
    previousCommit: z.string().optional(),
  })
  .strict();
export type Trigger = z.infer<typeof Trigger>;
