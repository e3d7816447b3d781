import { liveDeploymentKey, parseJsonAs, parseLiveDeployment, Run } from '@conveyor/contracts';
import type { Redis } from 'ioredis';
import type { RunSummary } from '../domain/artifact-retention.js';
import type { LiveRuns, RetentionReader } from '../ports.js';
import { runKey } from './redis-run-store.js';

/** The fields retention reads of a run record; the rest of it (stages, results) is not parsed. */
const RunSummarySchema = Run.pick({ id: true, pipeline: true, number: true, status: true, createdAt: true });

/** Ids per pipelined batch: one round trip for an install's usual few thousand, bounded replies for a backlog. */
const BATCH = 2000;

/**
 * Reads for retention (artifacts and run history) what RedisRunStore and the deployer write: the run hashes
 * (`<prefix>:run:<id>`, field `json`) and the live deployments (liveDeploymentKey). Read only.
 */
export class RedisRetentionReader implements RetentionReader {
  constructor(
    private readonly redis: Redis,
    private readonly prefix: string,
  ) {}

  async runRecords(runIds: readonly string[]): Promise<Map<string, RunSummary | 'unreadable'>> {
    const records = new Map<string, RunSummary | 'unreadable'>();
    for (let at = 0; at < runIds.length; at += BATCH) {
      const ids = runIds.slice(at, at + BATCH);
      const pipeline = this.redis.pipeline();
      for (const id of ids) pipeline.hget(runKey(this.prefix, id), 'json');
      const replies = (await pipeline.exec()) ?? [];
      replies.forEach(([err, json], i) => {
        if (err) throw err;
        if (typeof json === 'string') records.set(ids[i]!, summaryOf(json));
      });
    }
    return records;
  }

  async liveRuns(pipelines: readonly string[]): Promise<LiveRuns> {
    const live: LiveRuns = { runIds: new Set(), unreadable: new Set() };
    if (pipelines.length === 0) return live;
    const values = await this.redis.mget(pipelines.map((p) => liveDeploymentKey(this.prefix, p)));
    values.forEach((text, i) => {
      if (text === null) return;
      const deployment = parseLiveDeployment(text);
      if (deployment) live.runIds.add(deployment.runId);
      else live.unreadable.add(pipelines[i]!);
    });
    return live;
  }
}

/** Never trust what comes out of Redis: a record that does not parse keeps its artifacts. */
function summaryOf(json: string): RunSummary | 'unreadable' {
  return parseJsonAs(RunSummarySchema, json) ?? 'unreadable';
}
