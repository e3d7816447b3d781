import { z } from 'zod';
import { BaseEnv, OptionalSecret, parseEnv } from '@conveyor/service-kit';

export const MonitorEnv = BaseEnv.extend({
  PORT: z.coerce.number().int().min(0).max(65_535).default(7005),
  /** When set, `GET /api/v1/history` requires `Authorization: Bearer <token>`. */
  CONVEYOR_API_TOKEN: OptionalSecret,
  /** Finished runs kept in Redis, overall and per pipeline. */
  MONITOR_HISTORY_MAX: z.coerce.number().int().min(1).max(1_000_000).default(1000),
  /** Finished runs older than this leave the history; a pipeline's history with no run for this long (a deleted pipeline's) goes. */
  MONITOR_HISTORY_DAYS: z.coerce.number().int().min(1).max(3650).default(365),
  /** Pipelines, and as many (pipeline, stage) pairs, with metric series; beyond it the least recently updated are removed. */
  MONITOR_METRIC_KEYS_MAX: z.coerce.number().int().min(1).max(100_000).default(2000),
  /** A stream entry pending this long (its consumer died) is claimed by another monitor. */
  EVENTS_CLAIM_IDLE_MS: z.coerce.number().int().min(1000).default(60_000),
});
export type MonitorEnv = z.infer<typeof MonitorEnv>;

export function loadEnv(source: NodeJS.ProcessEnv = process.env): MonitorEnv {
  return parseEnv(MonitorEnv, source);
}
