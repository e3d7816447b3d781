import { z } from 'zod';
import { ArtifactLimitEnv } from '@conveyor/artifacts';
import { BuildUserEnv } from '@conveyor/runner';
import { BaseEnv, parseEnv, RedisFenceEnv } from '@conveyor/service-kit';

export const Env = BaseEnv.extend({
  PORT: z.coerce.number().int().min(0).max(65535).default(7003),
  ...BuildUserEnv,
  ...RedisFenceEnv,
  ...ArtifactLimitEnv,
  /** Scratch space: one directory per build, removed when it ends. Local disk, never shared. */
  WORK_DIR: z.string().default('.conveyor/work/test'),
});
export type Env = z.infer<typeof Env>;
export const loadEnv = (source: NodeJS.ProcessEnv = process.env): Env => parseEnv(Env, source);
