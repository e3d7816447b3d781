import type { Run } from '@conveyor/contracts';
import type { Redis } from 'ioredis';
import type { HistoryPage, RunHistory } from '../ports.js';
import { activeRunsKey, runIndexKey, runKey, runPipelinesKey, runPipelinesListedKey, type RedisRunStore } from './redis-run-store.js';

/**
 * Deletes runs from one pipeline's index: KEYS are the index, the active set, the pipelines set, then
 * one key per run; ARGV the pipeline, the count of runs, then per run its id and the version it was read
 * at, then the ids of index entries read without a record. A run whose version moved since is left (a
 * finished run never changes: this guards against a reader's mistake); an entry is dropped only while
 * its record is still missing. The pipeline leaves the pipelines set with its last run (CREATE_RUN adds
 * it again, atomically, with its next). Returns the runs and the entries removed.
 */
const REMOVE_RUNS = `
local index, activeKey, pipelinesKey = KEYS[1], KEYS[2], KEYS[3]
local pipeline, n = ARGV[1], tonumber(ARGV[2])
local runs, dangling = 0, 0
for k = 1, n do
  local id, version = ARGV[1 + 2 * k], ARGV[2 + 2 * k]
  if redis.call('HGET', KEYS[3 + k], 'version') == version then
    redis.call('DEL', KEYS[3 + k])
    redis.call('ZREM', index, id)
    redis.call('SREM', activeKey, id)
    runs = runs + 1
  end
end
for i = 3 + 2 * n, #ARGV do
  if redis.call('EXISTS', KEYS[4 + n + (i - 3 - 2 * n)]) == 0 then
    dangling = dangling + redis.call('ZREM', index, ARGV[i])
  end
end
if redis.call('ZCARD', index) == 0 then redis.call('SREM', pipelinesKey, pipeline) end
return { runs, dangling }
`;

interface Scripts {
  conveyorRemoveRuns(...args: (string | number)[]): Promise<[number, number]>;
}

/** Run history in Redis for retention: the run indexes, read a page at a time, and deletion of runs. */
export class RedisRunHistory implements RunHistory {
  constructor(
    private readonly redis: Redis,
    private readonly prefix: string,
    private readonly store: Pick<RedisRunStore, 'readMany'>,
  ) {
    redis.defineCommand('conveyorRemoveRuns', { lua: REMOVE_RUNS });
  }

  async pipelines(): Promise<string[]> {
    const done = runPipelinesListedKey(this.prefix);
    // Runs stored before CREATE_RUN kept this set: their pipelines are found once, by a walk of the keys.
    if ((await this.redis.exists(done)) === 0) {
      const at = runIndexKey(this.prefix, '');
      let cursor = '0';
      do {
        const [next, keys] = await this.redis.scan(cursor, 'MATCH', `${at}*`, 'COUNT', 1000);
        cursor = next;
        // An earlier version's active set (runs:active, a SET) is not an index: TYPE tells them apart.
        const types = keys.length ? ((await keys.reduce((p, k) => p.type(k), this.redis.pipeline()).exec()) ?? []) : [];
        const indexes = keys.filter((_, i) => types[i]?.[1] === 'zset').map((k) => k.slice(at.length));
        if (indexes.length) await this.redis.sadd(runPipelinesKey(this.prefix), ...indexes);
      } while (cursor !== '0');
      await this.redis.set(done, '1');
    }
    return this.redis.smembers(runPipelinesKey(this.prefix));
  }

  async page(pipeline: string, cutoff: number, offset: number, limit: number): Promise<HistoryPage> {
    const ids = await this.redis.zrangebyscore(runIndexKey(this.prefix, pipeline), '-inf', `(${cutoff}`, 'LIMIT', offset, limit);
    const read = await this.store.readMany(ids);
    const runs: Run[] = [];
    const missing: string[] = [];
    // A record that does not parse is left out (kept): what cannot be read is not judged.
    read.forEach((r, i) => (r === undefined ? missing.push(ids[i]!) : r instanceof Error ? undefined : runs.push(r)));
    return { runs, missing, read: ids.length };
  }

  async remove(pipeline: string, runs: readonly Run[], missing: readonly string[]): Promise<{ runs: number; dangling: number }> {
    if (runs.length === 0 && missing.length === 0) return { runs: 0, dangling: 0 };
    const keys = [runIndexKey(this.prefix, pipeline), activeRunsKey(this.prefix), runPipelinesKey(this.prefix), ...runs.map((r) => runKey(this.prefix, r.id)), ...missing.map((id) => runKey(this.prefix, id))];
    const args = [pipeline, runs.length, ...runs.flatMap((r) => [r.id, r.version]), ...missing];
    const [removed, dangling] = await (this.redis as unknown as Scripts).conveyorRemoveRuns(keys.length, ...keys, ...args);
    return { runs: removed, dangling };
  }
}
