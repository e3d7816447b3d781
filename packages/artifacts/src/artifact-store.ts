import type { Readable } from 'node:stream';
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
  /** Packs `files` (paths relative to `dir`) as a tar under `key`; an abort of `signal` stops it, keeping nothing. */
  putFiles(key: string, dir: string, files: readonly string[], opts?: { signal?: AbortSignal }): Promise<ArtifactRef>;
  /** Unpacks the artifact into `dir`, checking its digest; entries may not escape `dir`. */
  extractTo(ref: ArtifactRef, dir: string): Promise<void>;
}

/** An artifact opened for reading: its bytes as stored, checked against its digest as they are read. */
export interface ArtifactReader {
  bytes: number;
  /**
   * The tar. Its last chunk comes only once the digest matched the ref's: a corrupt artifact ends the
   * stream with an error before its end, so a reader never takes it for whole.
   */
  stream: Readable;
}

/** What downloading an artifact needs of a store. */
export interface ReadableArtifactStore {
  /** Opens the artifact `ref` names; undefined when it is not there (removed by retention). */
  open(ref: ArtifactRef): Promise<ArtifactReader | undefined>;
}

/** The artifacts a store holds for one run (everything under `runs/<runId>/`). */
export interface StoredRunArtifacts {
  runId: string;
  /** When the run's artifacts last changed (the last one written), in ms since the epoch. */
  modifiedAt: number;
}

/** What artifact retention needs of a store: the runs it holds artifacts of, and removing them. */
export interface PrunableArtifactStore {
  /** Every run with artifacts in the store; entries that are not a run's (other names, links) are left out. */
  listRuns(): Promise<StoredRunArtifacts[]>;
  /**
   * Removes all of a run's artifacts and returns the bytes freed; undefined when it had none (or another
   * replica removed them first): removing twice is fine. Throws on an id that is not a plain run id,
   * removing nothing.
   */
  removeRun(runId: string): Promise<number | undefined>;
}
