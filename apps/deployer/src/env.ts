import { z } from 'zod';
import { uidRange } from '@conveyor/runner';
import { BaseEnv, OptionalSecret, parseEnv, RedisFenceEnv } from '@conveyor/service-kit';
import { DEFAULT_UID_CLAIMS_DIR } from './adapters/uid-claims.js';

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
   * (group id = user id). Default 2000001000-2000009999. Claimed host-wide (DEPLOY_UID_CLAIMS_DIR):
   * deployers of one host may share the range, whatever their DEPLOY_DIRs.
   */
  DEPLOY_UIDS: uidRange('2000001000-2000009999').optional(),
  /**
   * The host's register of which deploy user id is whose (one file per id naming its deploy directory
   * and version), root's alone. Every deployer of the host must use the same one; persistent (not under
   * /run), as the version directories whose files the ids own are.
   */
  DEPLOY_UID_CLAIMS_DIR: z.string().startsWith('/', 'must be an absolute path (one directory for the whole host)').default(DEFAULT_UID_CLAIMS_DIR),
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
