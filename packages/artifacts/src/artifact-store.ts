import type { ArtifactRef } from '@conveyor/contracts';

/** Where stages keep what they hand to each other (CodePipeline's artifact bucket). */
export interface ArtifactStore {
  /** The largest artifact it stores, in bytes (`ARTIFACT_MAX_BYTES`), if it has a limit. */
  readonly maxBytes?: number;
  /**
   * Stores an existing tar file under `key`. Keys are write-once: a second put returns the first artifact.
   * Past the store's limit, both puts fail with ArtifactTooLargeError, storing nothing.
   */
  putTar(key: string, tarPath: string): Promise<ArtifactRef>;
  /** Packs `files` (paths relative to `dir`) as a tar under `key`. */
  putFiles(key: string, dir: string, files: readonly string[]): Promise<ArtifactRef>;
  /** Unpacks the artifact into `dir`, checking its digest; entries may not escape `dir`. */
  extractTo(ref: ArtifactRef, dir: string): Promise<void>;
}
