import { z } from 'zod';
import { DEFAULT_ARTIFACT_MAX_BYTES } from './fs-artifact-store.js';

/**
 * For the services that write artifacts (source-webhook's snapshots, build's artifacts): the largest one
 * stored, in bytes (at least 1 MiB; default the artifact store's own, DEFAULT_ARTIFACT_MAX_BYTES: 2 GiB).
 * Past it the stage fails naming the setting.
 */
export const ArtifactLimitEnv = {
  ARTIFACT_MAX_BYTES: z.coerce.number().int().min(1024 * 1024).max(Number.MAX_SAFE_INTEGER).default(DEFAULT_ARTIFACT_MAX_BYTES),
};
