import { hostname } from 'node:os';
import { randomUUID } from 'node:crypto';
import type { Redis } from 'ioredis';
import { closeRedis } from './lifecycle.js';
import type { Logger } from './logger.js';

/** One entry of a Redis stream: the stream it came from, its id and its flat field/value list. */
export interface StreamEntry {
  stream: string;
  id: string;
  fields: string[];
}

type RawEntry = [id: string, fields: string[] | null];

/**
 * Drops the group's readers (other than ARGV[2]) that have nothing pending and have been idle more
 * than ARGV[3] ms. Checked and dropped in one script: DELCONSUMER discards a reader's pending
 * entries, so one that takes an entry in between must never be dropped with it.
 */
const FORGET_IDLE_CONSUMERS = `
local removed = 0
for _, row in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local info = {}
  for i = 1, #row, 2 do info[row[i]] = row[i + 1] end
  if info['name'] ~= ARGV[2] and tonumber(info['pending']) == 0 and tonumber(info['idle']) > tonumber(ARGV[3]) then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], info['name'])
    removed = removed + 1
  end
end
return removed
`;

/**
 * Entries removed from the stream (trimmed, or deleted) before group ARGV[1] read them: the number, -1
 * when Redis cannot tell how many (the group's read count is unknown), or nil when none. Only possible
 * while the group's last-delivered id is before the stream's first entry (XREADGROUP > would skip the gap
 * silently). The group's read count is then set past what was removed, so the same loss is reported once,
 * by whichever reader sees it first, even across restarts. With ARGV[2] = '1' (a group just made at 0)
 * what was removed before the group existed was never its to read: the count is set, nothing reported.
 * Trimming does not count in max-deleted-entry-id (Redis 7.0), so the ids and counters are compared.
 */
const TRIMMED_UNREAD = `
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
local function fields(flat)
  local t = {}
  for i = 1, #flat, 2 do t[flat[i]] = flat[i + 1] end
  return t
end
local function before(a, b)
  local am, as = string.match(a, '^(%d+)-(%d+)$')
  local bm, bs = string.match(b, '^(%d+)-(%d+)$')
  am, as, bm, bs = tonumber(am), tonumber(as), tonumber(bm), tonumber(bs)
  return am < bm or (am == bm and as < bs)
end
local group
for _, row in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local info = fields(row)
  if info['name'] == ARGV[1] then group = info end
end
if not group then return false end
local stream = fields(redis.call('XINFO', 'STREAM', KEYS[1]))
local last = group['last-delivered-id']
local first = stream['first-entry'] and stream['first-entry'][1]
if first and not before(last, first) then return false end
local removed = stream['entries-added'] - stream['length']
local read = group['entries-read']
local lost
if ARGV[2] == '1' then
  if last == '0-0' then redis.call('XGROUP', 'SETID', KEYS[1], ARGV[1], last, 'ENTRIESREAD', removed) end
  return false
elseif read then
  lost = removed - read
  if lost <= 0 then return false end
else
  if removed == 0 then return false end
  lost = -1
end
redis.call('XGROUP', 'SETID', KEYS[1], ARGV[1], last, 'ENTRIESREAD', removed)
return lost
`;

/** Entries lost to one stream's trimming: `count` is undefined when Redis cannot tell how many. */
export interface LostEntries {
  stream: string;
  count: number | undefined;
}

export interface StreamGroupConsumerOptions {
  /** A dedicated connection: XREADGROUP BLOCK holds it. Acks and claims go on a duplicate. */
  redis: Redis;
  streams: readonly string[];
  group: string;
  /** What is read, for log lines ("stage event streams"). */
  name: string;
  /**
   * Handles a batch of entries and returns those it could not handle: they stay pending and are
   * claimed again after `claimIdleMs`. Everything else is acknowledged.
   */
  handle(entries: StreamEntry[]): Promise<readonly StreamEntry[]>;
  /** Where an entry delivered more than `maxDeliveries` times is parked, with its stream and id. */
  deadLetterStream: string;
  logger: Logger;
  /** Entries read per stream at a time (default 500). */
  batch?: number;
  blockMs?: number;
  /** Entries a dead reader left unacknowledged this long are claimed by a live one (default 30 s). */
  claimIdleMs?: number;
  /** Batches handled at once (default 8); 1 keeps entries in order. */
  maxInFlight?: number;
  /** Readers with nothing pending and idle this long are dropped from the group (default 1 hour). */
  forgetConsumersIdleMs?: number;
  maxDeliveries?: number;
  /** Runs before the groups are made and on every maintenance pass (e.g. to re-assert a trim length). */
  maintain?(commands: Redis): Promise<void>;
  /**
   * How long stop() waits for the read, the batches being handled and leaving the group (default 3 s);
   * past it the connections are dropped (see stop()).
   */
  stopTimeoutMs?: number;
  /**
   * Told (besides a warning in the log) when entries were trimmed from a stream before this group read
   * them: a reader that fell more than the trim length behind (or was down meanwhile) never sees them.
   * Checked on each maintenance pass, so a gap opened and read past between two passes goes unseen.
   */
  onEntriesLost?(lost: LostEntries): void;
}

/**
 * Reads Redis streams with a consumer group, at least once: each batch goes to `handle`, what it
 * handled is acknowledged in one round trip, what it did not stays pending. Entries a dead reader
 * left are taken over with XAUTOCLAIM; one that keeps failing is parked on the dead-letter stream;
 * a group lost with its stream is made again; readers that died with nothing pending are dropped.
 * New groups start from the beginning of their stream (handling must be idempotent).
 */
export class StreamGroupConsumer {
  private readonly consumer = `${hostname()}-${process.pid}-${randomUUID().slice(0, 8)}`;
  private running = false;
  private loop: Promise<void> | undefined;
  private lastClaim = 0;
  private lastForget = 0;
  private readonly claimCursors = new Map<string, string>();
  private commands: Redis | undefined;
  private readonly inFlight = new Set<Promise<void>>();
  private trimCheckFailed = false;

  constructor(private readonly opts: StreamGroupConsumerOptions) {}

  isRunning(): boolean {
    return this.running;
  }

  async start(): Promise<void> {
    this.commands = this.opts.redis.duplicate();
    // Its errors are the reading connection's (same Redis), which the caller logs; unheard, ioredis prints each.
    this.commands.on('error', () => undefined);
    await this.createGroups();
    this.running = true;
    this.loop = this.run();
  }

  /**
   * Stops reading, waits for the batches being handled, and leaves the group if nothing is pending, all
   * within `stopTimeoutMs`. Both connections retry for ever, so a Redis that is away would hold the read
   * (and any command) for good: past the deadline they are dropped instead, which ends the read, and
   * the reader stays in the group (harmless: what it left pending is claimed by another reader, and an
   * idle reader with nothing pending is dropped from the group). The caller still closes `redis` as
   * usual: closing a dropped connection (closeRedis) returns at once.
   */
  async stop(): Promise<void> {
    this.running = false;
    const deadline = Date.now() + (this.opts.stopTimeoutMs ?? 3000);
    const stopped = (await settlesBy(this.loop, deadline)) && (await settlesBy(Promise.all(this.inFlight), deadline));
    if (!stopped || !(await settlesBy(this.leaveGroup(), deadline))) return this.dropConnections();
    if (this.commands) await closeRedis(this.commands, Math.max(0, deadline - Date.now()));
  }

  /** DELCONSUMER drops the consumer's pending entries for good: keep a consumer that still has some, so another reader claims them. */
  private async leaveGroup(): Promise<void> {
    // Redis away: the commands would wait for it, and staying in the group is harmless.
    if (this.opts.redis.status !== 'ready') return;
    for (const stream of this.opts.streams) {
      const pending = (await this.opts.redis.xpending(stream, this.opts.group, '-', '+', 1, this.consumer).catch(() => [1])) as unknown[];
      if (pending.length === 0) await this.opts.redis.xgroup('DELCONSUMER', stream, this.opts.group, this.consumer).catch(() => undefined);
    }
  }

  /** Ends what still waits on either connection (a blocked XREADGROUP, an ack): it fails, or never resumes. */
  private dropConnections(): void {
    this.opts.logger.warn({ waitedMs: this.opts.stopTimeoutMs ?? 3000 }, `${this.opts.name}: did not stop in time (Redis away?); dropping its connections`);
    this.opts.redis.disconnect();
    this.commands?.disconnect();
  }

  private async createGroups(): Promise<void> {
    await this.opts.maintain?.(this.commands!);
    for (const stream of this.opts.streams) {
      const made = await this.commands!.xgroup('CREATE', stream, this.opts.group, '0', 'MKSTREAM').then(
        () => true,
        (err: Error) => {
          if (!/BUSYGROUP/.test(err.message)) throw err;
          return false;
        },
      );
      // Failing here only leaves the count unset: a later check may then report an unknown loss.
      if (made) await this.trimmedUnread(stream, true).catch(() => null);
    }
  }

  private async run(): Promise<void> {
    const { redis, logger, streams, group } = this.opts;
    const ids = streams.map(() => '>');
    while (this.running) {
      try {
        await this.maintenance();
        const reply = (await redis.xreadgroup('GROUP', group, this.consumer, 'COUNT', this.opts.batch ?? 500, 'BLOCK', this.opts.blockMs ?? 1000, 'STREAMS', ...streams, ...ids)) as
          | [stream: string, entries: RawEntry[]][]
          | null;
        const entries = (reply ?? []).flatMap(([stream, raw]) => raw.map(([id, fields]) => ({ stream, id, fields })));
        // Read the next batch while this one is handled: a batch waits on its slowest entry only.
        if (entries.length) await this.track(this.process(entries));
      } catch (err) {
        if (!this.running) break;
        // A stream deleted under us takes its group with it.
        if (/NOGROUP/.test(String((err as Error).message))) await this.createGroups().catch(() => undefined);
        else logger.warn({ err }, `${this.opts.name}: read failed; retrying`);
        await new Promise((r) => setTimeout(r, 500));
      }
    }
  }

  private async track(work: Promise<void>): Promise<void> {
    const p = work.catch((err) => this.opts.logger.warn({ err }, `${this.opts.name}: handling failed; the entries will be claimed again`)).finally(() => this.inFlight.delete(p));
    this.inFlight.add(p);
    if (this.inFlight.size >= (this.opts.maxInFlight ?? 8)) await Promise.race(this.inFlight);
  }

  /** Hands the entries (a deleted entry has no fields: nothing to handle) to `handle`, and acknowledges what it handled. */
  private async process(entries: { stream: string; id: string; fields: string[] | null }[]): Promise<void> {
    const readable = entries.filter((e): e is StreamEntry => e.fields !== null);
    const failed = new Set(readable.length ? await this.opts.handle(readable) : []);
    const done = new Map<string, string[]>();
    for (const e of entries) {
      if (failed.has(e as StreamEntry)) continue;
      const ids = done.get(e.stream);
      if (ids) ids.push(e.id);
      else done.set(e.stream, [e.id]);
    }
    if (done.size === 0) return;
    const ack = this.commands!.pipeline();
    for (const [stream, ids] of done) ack.xack(stream, this.opts.group, ...ids);
    await ack.exec();
  }

  private async maintenance(): Promise<void> {
    const idle = this.opts.claimIdleMs ?? 30_000;
    if (Date.now() - this.lastClaim < Math.min(idle, 5000)) return;
    this.lastClaim = Date.now();
    await this.opts.maintain?.(this.commands!);
    for (const stream of this.opts.streams) await this.reportTrimmed(stream);
    for (const stream of this.opts.streams) await this.claimAbandoned(stream, idle);
    if (Date.now() - this.lastForget > 600_000) {
      this.lastForget = Date.now();
      await this.forgetIdleConsumers().catch((err) => this.opts.logger.warn({ err }, `${this.opts.name}: dropping idle readers failed`));
    }
  }

  /** Warns (and tells onEntriesLost) when entries were trimmed from `stream` before this group read them. */
  private async reportTrimmed(stream: string): Promise<void> {
    const { logger, name } = this.opts;
    const lost = await this.trimmedUnread(stream, false).catch((err: Error) => {
      // Never in the way of reading (e.g. a Redis before 7.0, without XGROUP SETID ENTRIESREAD); said once.
      if (!this.trimCheckFailed) logger.warn({ err, stream }, `${name}: could not check for entries trimmed before being read`);
      this.trimCheckFailed = true;
      return null;
    });
    if (lost === null) return;
    const count = lost < 0 ? undefined : lost;
    logger.warn({ stream, count }, `${name}: entries were trimmed from the stream before this group read them; they are lost${count === undefined ? ' (how many is unknown)' : ''}`);
    this.opts.onEntriesLost?.({ stream, count });
  }

  /** TRIMMED_UNREAD: the entries lost (-1: an unknown number), or null when none. */
  private async trimmedUnread(stream: string, groupIsNew: boolean): Promise<number | null> {
    return (await this.commands!.eval(TRIMMED_UNREAD, 1, stream, this.opts.group, groupIsNew ? '1' : '0')) as number | null;
  }

  private async claimAbandoned(stream: string, idle: number): Promise<void> {
    const { group, logger, name } = this.opts;
    const reply = (await this.commands!.xautoclaim(stream, group, this.consumer, idle, this.claimCursors.get(stream) ?? '0-0', 'COUNT', 500)) as [string, RawEntry[], string[]?];
    this.claimCursors.set(stream, reply?.[0] ?? '0-0');
    const trimmed = reply?.[2] ?? [];
    if (trimmed.length) logger.warn({ stream, count: trimmed.length }, `${name}: pending entries were trimmed from the stream before being handled`);
    const entries = (reply?.[1] ?? []).filter(([id, fields]) => id && fields).map(([id, fields]) => ({ stream, id, fields: fields! }));
    if (entries.length === 0) return;
    logger.info({ stream, count: entries.length }, `${name}: claimed abandoned entries`);
    const poisoned = await this.overDelivered(stream, entries.map((e) => e.id));
    for (const e of entries.filter((x) => poisoned.has(x.id))) {
      // An entry that failed this often will not be handled: park it where a person can see it.
      logger.error({ stream, id: e.id }, `${name}: entry dead-lettered after repeated failures`);
      await this.commands!.multi().xadd(this.opts.deadLetterStream, '*', 'stream', stream, 'id', e.id, ...e.fields).xack(stream, group, e.id).exec();
    }
    await this.track(this.process(entries.filter((e) => !poisoned.has(e.id))));
  }

  /** The claimed entries delivered more than maxDeliveries times (asked one by one: a range would also list others). */
  private async overDelivered(stream: string, ids: string[]): Promise<Set<string>> {
    const pipeline = this.commands!.pipeline();
    for (const id of ids) pipeline.xpending(stream, this.opts.group, id, id, 1);
    const replies = (await pipeline.exec()) ?? [];
    const rows = replies.flatMap(([err, rows]) => (err ? [] : (rows as [string, string, number, number][])));
    const max = this.opts.maxDeliveries ?? 10;
    return new Set(rows.filter(([, , , deliveries]) => deliveries > max).map(([id]) => id));
  }

  private async forgetIdleConsumers(): Promise<void> {
    for (const stream of this.opts.streams) {
      await this.commands!.eval(FORGET_IDLE_CONSUMERS, 1, stream, this.opts.group, this.consumer, this.opts.forgetConsumersIdleMs ?? 3_600_000);
    }
  }
}

/** Whether `work` settles (either way) before `deadline`, a Date.now() time. It is not cancelled when it does not. */
async function settlesBy(work: Promise<unknown> | undefined, deadline: number): Promise<boolean> {
  if (!work) return true;
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<false>((resolve) => {
    timer = setTimeout(() => resolve(false), Math.max(0, deadline - Date.now()));
  });
  try {
    return await Promise.race([work.then(() => true, () => true), late]);
  } finally {
    clearTimeout(timer);
  }
}
