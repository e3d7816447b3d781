import { z } from 'zod';
import { ArtifactLimitEnv, BaseEnv, parseEnv } from '@conveyor/service-kit';

export const Env = BaseEnv.extend({
  PORT: z.coerce.number().int().min(0).max(65535).default(7001),
  /** Required: every /api/* request must send `Authorization: Bearer <token>`. */
  CONVEYOR_API_TOKEN: z.string().min(16, 'set CONVEYOR_API_TOKEN to a random string of at least 16 characters'),
  /** Bare git mirrors used by the Source stage. */
  SOURCE_CACHE_DIR: z.string().default('.conveyor/source-cache'),
  ...ArtifactLimitEnv,
  WEBHOOK_BODY_LIMIT: z.coerce.number().int().min(1024).default(25 * 1024 * 1024),
  /** How often active runs are checked for lost jobs and unsent enqueues. */
  RECONCILE_INTERVAL_MS: z.coerce.number().int().min(100).default(10_000),
  /** Results a dead orchestrator replica left unacknowledged this long are taken over. */
  RESULTS_CLAIM_IDLE_MS: z.coerce.number().int().min(100).default(30_000),
});
export type Env = z.infer<typeof Env>;

export const loadEnv = (source: NodeJS.ProcessEnv = process.env): Env => parseEnv(Env, source);
