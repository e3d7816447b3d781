import type { ArtifactRef, PipelineDefinition, Run, RunEvent, StageJob } from '@conveyor/contracts';
import type { RunSummary } from './domain/artifact-retention.js';

/** The one recorded outcome of an accepted webhook delivery. */
export interface DeliveryDecision {
  /** `<provider>:<deliveryId>:<pipeline>` */
  key: string;
  decision: { outcome: 'run-created' | 'skipped'; runId?: string; reason?: string; at: string };
}

export type CreateOutcome = { created: true } | { created: false; seenDecision?: DeliveryDecision['decision'] };

/** A transition to store: `run` (its version already bumped) replaces the stored run at `expectedVersion`. */
export interface RunUpdate {
  run: Run;
  expectedVersion: number;
  events: RunEvent[];
  /** Jobs this transition stops (stages it CANCELLED): marked and announced with it, atomically (ADR 0007). */
  stopJobs?: string[];
}

/** Durable run records with optimistic concurrency; events are stored with the transition that made them. */
export interface RunStore {
  nextRunNumber(pipeline: string): Promise<number>;
  get(runId: string): Promise<Run | undefined>;
  /** Stores a new run (refused if its id exists, or if the webhook delivery was already decided). */
  create(run: Run, events: RunEvent[], delivery?: DeliveryDecision): Promise<CreateOutcome>;
  /** Compare-and-set of many runs in one round trip; each is stored, or refused (false) when its version moved. */
  update(updates: readonly RunUpdate[]): Promise<boolean[]>;
  recordDelivery(delivery: DeliveryDecision): Promise<DeliveryDecision['decision'] | undefined>;
  /** The decision recorded for this delivery key, if any. */
  deliveryDecision(key: string): Promise<DeliveryDecision['decision'] | undefined>;
  /**
   * A pipeline's runs, newest first: at most `limit`, older than the run `before` names (a cursor this
   * returned as `next`, there when older runs remain).
   */
  /** Newest first; `unreadable` names runs whose record does not parse (left out of the page). */
  listByPipeline(pipeline: string, limit: number, before?: string): Promise<Run[] & { next?: string; unreadable?: string[] }>;
  activeRunIds(): Promise<string[]>;
}

/** A page of a pipeline's runs, oldest first. */
export interface HistoryPage {
  /** The runs whose records parse (one that does not is left out, and so kept). */
  runs: Run[];
  /** Index entries without a record. */
  missing: string[];
  /** How many entries the page held. */
  read: number;
}

/** What run history retention needs of the run store. */
export interface RunHistory {
  /** The pipelines that have runs (deleted pipelines' included). */
  pipelines(): Promise<string[]>;
  /** A page of the pipeline's runs created before `cutoff` (ms), oldest first, from `offset` on. */
  page(pipeline: string, cutoff: number, offset: number, limit: number): Promise<HistoryPage>;
  /**
   * Deletes these runs (record, index entry; callers pass finished runs, and one whose version moved since
   * it was read is left) and the index entries still without a record.
   */
  remove(pipeline: string, runs: readonly Run[], missing: readonly string[]): Promise<{ runs: number; dangling: number }>;
}

/** A definition as stored, and whether its pipeline was new. */
export interface StoredPipeline {
  created: boolean;
  definition: PipelineDefinition;
}

export interface PipelineStore {
  /**
   * Stores the definition. One without a webhook secret keeps the stored one (the secret is write-only:
   * a GET-edit-POST round trip omits it), atomically: never over a definition changed or deleted since.
   */
  put(def: PipelineDefinition): Promise<StoredPipeline>;
  get(name: string): Promise<PipelineDefinition | undefined>;
  list(): Promise<PipelineDefinition[]>;
  /** Returns true when there was such a pipeline. */
  remove(name: string): Promise<boolean>;
}

/** Where stage jobs go. `ensure` is idempotent: a job id already known is not added twice. */
export interface JobDispatcher {
  ensure(jobs: readonly StageJob[]): Promise<void>;
  /** The state of a stage job: what the reconciler needs to notice a job that ended without a result. */
  inspect(job: StageJob): Promise<{ state: 'pending' | 'completed' | 'failed' | 'missing'; reason?: string; result?: unknown }>;
  /**
   * Stops cancelled stage jobs: marks each cancelled (durably), drops it from its queue if no worker has
   * it yet, and tells the worker that has it to abort.
   */
  cancel(jobs: readonly CancelledJob[]): Promise<void>;
}

export interface CancelledJob {
  type: StageJob['type'];
  jobId: string;
}

/** Resolves a ref or commit of a repository and snapshots it as a tar artifact. */
export interface SourceRepository {
  /** `commitOnRef`: `commit` must be `ref`'s or one of its ancestors (a manual run's; a push's ref may have moved on since). */
  snapshot(input: { repository: string; ref: string; commit?: string; commitOnRef?: boolean; artifactKey: string; log: (line: string) => void }): Promise<{ commit: string; artifact: ArtifactRef }>;
}

/** What artifact retention reads besides the artifacts themselves (domain/artifact-retention.ts). */
export interface RetentionReader {
  /** The records of these runs (pipelined, 2000 a round trip): absent when none is stored, 'unreadable' when it does not parse. */
  runRecords(runIds: readonly string[]): Promise<Map<string, RunSummary | 'unreadable'>>;
  /** The runs whose versions serve now, for those of these pipelines the deployer recorded one for. */
  liveRuns(pipelines: readonly string[]): Promise<LiveRuns>;
}

export interface LiveRuns {
  runIds: Set<string>;
  /** Pipelines whose live record does not parse: which of their runs serves is not known. */
  unreadable: Set<string>;
}
