import { z } from 'zod';
import { IsoTime, parseJsonAs, PipelineName, RunId } from '@conveyor/contracts';

/**
 * Written by the deployer: `<DEPLOY_DIR>/<pipeline>/current.json` names the version serving a pipeline,
 * and each version directory keeps the same record of its own process (so a crash between starting a
 * process and recording it never leaves a process nobody can find).
 */
export const DeploymentRecord = z.object({
  pipeline: PipelineName,
  runId: RunId,
  attempt: z.number().int().positive(),
  // Never 1 (init; kill(-1) signals every process) and never 0 (our own group).
  pid: z.number().int().min(2),
  /** Process group of the deployed command (the whole group is stopped, never just the leader). */
  pgid: z.number().int().min(2),
  port: z.number().int().min(1).max(65_535),
  url: z.string(),
  commit: z.string(),
  startedAt: IsoTime,
  /** Kernel start time of the group leader (Linux), so a recycled pid is never mistaken for ours. */
  procStart: z.string().regex(/^\d{1,20}$/).optional(),
  /** The boot it started in (Linux's boot id): after a reboot, pids and start times name other processes. */
  bootId: z.string().optional(),
  /**
   * The version's own random mark, in every one of its processes' environment as CONVEYOR_DEPLOY_MARK
   * (childEnv): once its group's leader is gone, a process of that group number is the version's only if
   * it carries it. Per version, unlike the run id (shared by a run's attempts and its builds' processes),
   * and not known outside the deployer and the version. Missing in records of deployers before it (the
   * run id stands in).
   */
  mark: z.string().regex(/^[0-9a-f-]{36}$/).optional(),
  /**
   * When the deployer recorded this version as the one serving (set in its own record, then in
   * current.json): a re-delivery of its job can then tell "went live, and a later version replaced it"
   * from "never went live". Missing in records of deployers before it, and of versions never live.
   */
  liveAt: IsoTime.optional(),
});
export type DeploymentRecord = z.infer<typeof DeploymentRecord>;

export const CURRENT_FILE = 'current.json';
/**
 * Inside a version directory, beside (never inside) `app/`, where the artifact is unpacked: nothing
 * a commit contains can forge the record the deployer trusts to know which process group to stop.
 */
export const VERSION_RECORD_FILE = '.conveyor-process.json';
export const OUTPUT_FILE = '.conveyor-output.log';
export const APP_DIR = 'app';
/** A version's home when it runs as a user of its own (the deployer's is not its to write). */
export const HOME_DIR = 'home';

/** `<runId>-<attempt>`: both parts are validated by the contracts (no `/`, no `..`). */
export function versionName(runId: string, attempt: number): string {
  return `${runId}-${attempt}`;
}

export function isSameVersion(record: Pick<DeploymentRecord, 'runId' | 'attempt'>, runId: string, attempt: number): boolean {
  return record.runId === runId && record.attempt === attempt;
}

/**
 * The version serving now (`current`), when it went live after `own` did: `own` (a version's record, read
 * again on a re-delivery of its job) served once and was replaced since, so it must not come back. A
 * version marked live that current.json never named (its deployer died in between) is not superseded.
 */
export function supersededBy(own: DeploymentRecord | undefined, current: DeploymentRecord | undefined): DeploymentRecord | undefined {
  if (!own?.liveAt || !current?.liveAt || isSameVersion(current, own.runId, own.attempt)) return undefined;
  return Date.parse(current.liveAt) > Date.parse(own.liveAt) ? current : undefined;
}

export function localUrl(port: number): string {
  return `http://127.0.0.1:${port}`;
}

/** Parses stored JSON; undefined when it is missing, unreadable or not a record (never trust the disk). */
export function parseRecord(text: string | undefined): DeploymentRecord | undefined {
  return parseJsonAs(DeploymentRecord, text);
}
