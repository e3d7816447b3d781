import type { Redis } from 'ioredis';
import { parseHistoryEntry, type HistoryEntry } from '../domain/history.js';
import type { HistoryStore } from '../ports.js';

/**
 * Sorted sets scored by finish time: `<prefix>:history` for all pipelines and
 * `<prefix>:history:pipeline:<name>` for each, both capped at `max` entries and at `keepDays` days: an
 * entry that finished longer ago is dropped on the next write, and a set nothing was written to for
 * `keepDays` (a deleted pipeline's) expires.
 */
export class RedisHistoryStore implements HistoryStore {
  constructor(
    private readonly writer: Redis,
    private readonly reader: Redis,
    private readonly prefix: string,
    private readonly max: number,
    private readonly keepDays = 365,
    private readonly now: () => number = Date.now,
  ) {}

  private key(pipeline?: string): string {
    return pipeline === undefined ? `${this.prefix}:history` : `${this.prefix}:history:pipeline:${pipeline}`;
  }

  async record(entry: HistoryEntry): Promise<void> {
    const member = JSON.stringify(entry);
    const score = Date.parse(entry.finishedAt);
    const keepMs = this.keepDays * 86_400_000;
    const tx = this.writer.multi();
    for (const key of [this.key(), this.key(entry.pipeline)]) {
      tx.zadd(key, score, member)
        .zremrangebyrank(key, 0, -(this.max + 1))
        .zremrangebyscore(key, '-inf', `(${this.now() - keepMs}`)
        .pexpire(key, keepMs);
    }
    throwFirstError(await tx.exec());
  }

  async recent(query: { pipeline?: string; limit: number }): Promise<HistoryEntry[]> {
    const members = await this.reader.zrevrange(this.key(query.pipeline), 0, query.limit - 1);
    return members.map(parseHistoryEntry).filter((e): e is HistoryEntry => e !== undefined);
  }
}

/**
 * A transaction's commands fail one by one (e.g. WRONGTYPE) while exec() itself resolves: unchecked, the
 * event would be acknowledged but not stored. Thrown, it stays pending and is tried again.
 */
function throwFirstError(replies: [error: Error | null, result: unknown][] | null): void {
  if (!replies) throw new Error('history write was not applied (transaction aborted)');
  const failed = replies.find(([err]) => err);
  if (failed) throw failed[0];
}
