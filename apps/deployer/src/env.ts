import { z } from 'zod';
import { uidRange } from '@conveyor/runner';
import { BaseEnv, OptionalSecret, parseEnv, RedisFenceEnv } from '@conveyor/service-kit';

export const DeployerEnv = BaseEnv.extend({
  PORT: z.coerce.number().int().min(0).max(65_535).default(7004),
  /** Where versions are unpacked and run, and where current.json records what serves each pipeline. */
  DEPLOY_DIR: z.string().min(1).default('.conveyor/deployments'),
  DEPLOY_STOP_GRACE_SECONDS: z.coerce.number().min(0).max(600).default(10),
  DEPLOY_KEEP_VERSIONS: z.coerce.number().int().min(1).max(1000).default(5),
  /** A deployed command's `.conveyor-output.log` above this size is copied to `.1` and emptied (checked every 30 s). */
  DEPLOY_OUTPUT_MAX_BYTES: z.coerce.number().int().min(64 * 1024).default(10 * 1024 * 1024),
  /**
   * `first-last`: the user ids a root deployer gives deployed versions, one per version kept on disk
   * (group id = user id). Default 2000001000-2000009999. Deployers of one host with different
   * DEPLOY_DIRs need ranges of their own.
   */
  DEPLOY_UIDS: uidRange('2000001000-2000009999').optional(),
  /** Most processes and threads one deployed version may have at once (RLIMIT_NPROC of its user). */
  DEPLOY_MAX_PROCESSES: z.coerce.number().int().min(16).default(2048),
  ...RedisFenceEnv,
  /** When set, `GET /api/v1/deployments` requires `Authorization: Bearer <token>`. */
  CONVEYOR_API_TOKEN: OptionalSecret,
});
export type DeployerEnv = z.infer<typeof DeployerEnv>;

export function loadEnv(source: NodeJS.ProcessEnv = process.env): DeployerEnv {
  return parseEnv(DeployerEnv, source);
}
