import { z } from 'zod';
import { BaseEnv, parseEnv } from '@conveyor/service-kit';

export const Env = BaseEnv.extend({
  PORT: z.coerce.number().int().min(0).max(65535).default(7002),
  /** Scratch space: one directory per build, removed when it ends. Local disk, never shared. */
  /** Linux user (and group) builds run as; default `nobody` when the service runs as root, else its own user. */
  BUILD_UID: z.coerce.number().int().min(0).optional(),
  BUILD_GID: z.coerce.number().int().min(0).optional(),
  WORK_DIR: z.string().default('.conveyor/work/build'),
});
export type Env = z.infer<typeof Env>;
export const loadEnv = (source: NodeJS.ProcessEnv = process.env): Env => parseEnv(Env, source);
