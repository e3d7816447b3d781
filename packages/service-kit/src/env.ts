import { z } from 'zod';

/** Variables every service reads. Each service extends this with its own. */
export const BaseEnv = z.object({
  REDIS_URL: z.string().url().default('redis://127.0.0.1:6379'),
  /** BullMQ key prefix; lets several Conveyors (or tests) share one Redis. */
  QUEUE_PREFIX: z.string().regex(/^[A-Za-z0-9_-]+$/).default('conveyor'),
  HOST: z.string().default('127.0.0.1'),
  LOG_LEVEL: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
  /** Shared local artifact directory (the FsArtifactStore root). */
  ARTIFACT_DIR: z.string().default('.conveyor/artifacts'),
  /** BullMQ lock duration and stalled-check interval (ms): how fast a killed worker's job is re-run. */
  WORKER_LOCK_MS: z.coerce.number().int().min(1000).default(30_000),
  WORKER_STALLED_MS: z.coerce.number().int().min(1000).default(30_000),
  /** How long SIGTERM waits for running jobs before handing them back to the queue. */
  SHUTDOWN_DRAIN_SECONDS: z.coerce.number().min(0).max(3600).default(20),
  WORKER_CONCURRENCY: z.coerce.number().int().min(1).max(1000).default(4),
});
export type BaseEnv = z.infer<typeof BaseEnv>;


/** An optional secret such as an API token: unset or empty means off; set, it must be 16+ characters. */
export const OptionalSecret = z.preprocess((v) => (v === '' ? undefined : v), z.string().min(16, 'at least 16 characters').optional());

/** Parses the environment once at start-up; a bad value stops the process naming the variable. */
export function parseEnv<S extends z.ZodType>(schema: S, source: NodeJS.ProcessEnv = process.env): z.infer<S> {
  const parsed = schema.safeParse(source);
  if (!parsed.success) {
    const lines = parsed.error.issues.map((i) => `  ${i.path.join('.')}: ${i.message}`).join('\n');
    throw new Error(`invalid environment:\n${lines}`);
  }
  return parsed.data;
}
