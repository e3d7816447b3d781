import { z } from 'zod';
import { ArtifactLimitEnv } from '@conveyor/artifacts';
import { BaseEnv, parseEnv } from '@conveyor/service-kit';

/** setTimeout's longest delay (about 24.8 days): a longer one fires at once, every time. */
const MAX_TIMER_MS = 2_147_483_647;

export const Env = BaseEnv.extend({
  PORT: z.coerce.number().int().min(0).max(65535).default(7001),
  /** Required: every /api/* request must send `Authorization: Bearer <token>`. */
  CONVEYOR_API_TOKEN: z.string().min(16, 'set CONVEYOR_API_TOKEN to a random string of at least 16 characters'),
  /** Bare git mirrors used by the Source stage. */
  SOURCE_CACHE_DIR: z.string().default('.conveyor/source-cache'),
  ...ArtifactLimitEnv,
  WEBHOOK_BODY_LIMIT: z.coerce.number().int().min(1024).default(25 * 1024 * 1024),
  /** Artifact downloads (GET and HEAD of a stage's artifact) served at once by this process; past it, 503 with Retry-After. */
  ARTIFACT_DOWNLOADS_MAX: z.coerce.number().int().min(1).max(10_000).default(16),
  /** How often active runs are checked for lost jobs and unsent enqueues. */
  RECONCILE_INTERVAL_MS: z.coerce.number().int().min(100).max(MAX_TIMER_MS).default(10_000),
  /**
   * Artifact retention: the newest this many finished runs of each pipeline keep their artifacts (with any
   * run not finished, and the one whose version serves); older runs' are removed. 0 keeps everything.
   */
  ARTIFACT_RETENTION_RUNS: z.coerce.number().int().min(0).max(1_000_000).default(20),
  /**
   * Run history retention: finished runs created more than this many days ago are deleted (their record
   * and index entry), except the one whose version serves. 0 keeps them all.
   */
  RUN_HISTORY_DAYS: z.coerce.number().int().min(0).max(36_500).default(365),
  /** How often the retention passes run (each replica runs them; they are cheap and safe together). */
  RETENTION_INTERVAL_MS: z.coerce.number().int().min(1000).max(MAX_TIMER_MS).default(300_000),
  /** Results a dead orchestrator replica left unacknowledged this long are taken over. */
  RESULTS_CLAIM_IDLE_MS: z.coerce.number().int().min(100).default(30_000),
});
export type Env = z.infer<typeof Env>;

export const loadEnv = (source: NodeJS.ProcessEnv = process.env): Env => parseEnv(Env, source);
