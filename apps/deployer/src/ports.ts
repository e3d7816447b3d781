import type { DeployJob, LiveDeployment } from '@conveyor/contracts';
import type { DeploymentRecord } from './domain/deployment-record.js';

export type TargetKind = DeployJob['target']['kind'];

export interface DeployContext {
  /** Appends a line to the stage log the API shows. */
  log(line: string): void;
  /** Aborted when the worker loses the job, shuts down, or the run is cancelled. */
  signal: AbortSignal;
  /**
   * Whether the run was cancelled, asked of the store (not only of the signal, whose notice can be missed):
   * a target asks it just before the step it cannot take back, replacing what serves.
   */
  cancelled(): Promise<boolean>;
  /**
   * Says which version serves the pipeline now: called once a new version is recorded as live, before the
   * versions it replaces are stopped (a monitor stage still probing one of them then knows why it stops).
   */
  wentLive(live: LiveDeployment): Promise<void>;
}

export type DeployOutcome =
  | { status: 'deployed'; url: string }
  /** Re-delivery of a job whose version is already serving: nothing was started. */
  | { status: 'already-deployed'; url: string }
  /**
   * Re-delivery of a job whose version went live once, and a later run's version went live after it:
   * nothing was started or stopped. `url`: where this version served.
   */
  | { status: 'superseded'; url: string; by: { runId: string; url: string } }
  /** The run was cancelled before the new version replaced the live one: it was stopped; the previous one keeps serving. */
  | { status: 'cancelled'; message: string }
  /** The new version never became healthy; the previous one keeps serving. */
  | { status: 'unhealthy'; message: string };

/** Puts a deploy job's artifact into service somewhere (a local process, Kubernetes, …). */
export interface DeployTarget {
  readonly kind: TargetKind;
  /** Resolves with what happened; rejects only for errors worth a retry (I/O, a lost lock). */
  deploy(job: DeployJob, ctx: DeployContext): Promise<DeployOutcome>;
}

/** What is deployed, as `GET /api/v1/deployments` shows it. */
export interface DeploymentView extends DeploymentRecord {
  running: boolean;
}

export interface DeploymentCatalog {
  list(): Promise<DeploymentView[]>;
}
