import { hostname } from 'node:os';
import { randomUUID } from 'node:crypto';
import { QUEUES, runIdOfJob } from '@conveyor/contracts';
import { completionInput } from '../domain/outcome.js';
import { keepStageEvents, stageEventsKey, type Logger, type Redis } from '@conveyor/service-kit';
import type { Orchestrator, RunInputFor } from '../orchestrator.js';

export const RESULTS_GROUP = 'orchestrator';
const MAX_DELIVERIES = 10;
type Entry = [id: string, fields: string[] | null];
type StreamReply = [key: string, entries: Entry[]][];

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

export interface ResultsConsumerOptions {
  /** A dedicated connection: XREADGROUP BLOCK holds it. */
  redis: Redis;
  prefix: string;
  orchestrator: Pick<Orchestrator, 'handleInputs'>;
  logger: Logger;
  /** Stage queues whose jobs' outcomes are read. Default: all of them. */
  queues?: readonly string[];
  batch?: number;
  blockMs?: number;
  /** Entries a dead reader left unacknowledged this long are claimed by a live one. */
  claimIdleMs?: number;
  /** Batches applied at once. */
  maxInFlight?: number;
  /** Readers with nothing pending and idle this long are dropped from the group (default 1 hour). */
  forgetConsumersIdleMs?: number;
}

interface Decoded {
  key: string;
  id: string;
  item?: RunInputFor;
}

/**
 * A stage job's outcome is its BullMQ return value (a StageResult), which BullMQ writes in the same
 * script that completes the job and appends to the queue's event stream (ADR 0006). This reads those
 * streams with a consumer group: `completed` events carry the StageResult, a `failed` event (the job
 * failed for good: malformed, stalled out) becomes a lost stage. Other events are acknowledged and
 * skipped. An entry whose apply failed stays pending and is claimed again after `claimIdleMs`; one that
 * fails 10 times is parked on `<prefix>:results-dead`.
 */
export class ResultsConsumer {
  private readonly queues: readonly string[];
  private readonly keys: string[];
  private readonly consumer = `${hostname()}-${process.pid}-${randomUUID().slice(0, 8)}`;
  private running = false;
  private loop: Promise<void> | undefined;
  private lastClaim = 0;
  private lastForget = 0;
  private readonly claimCursors = new Map<string, string>();
  /** Acks and claims go on their own connection: the reading one is held by XREADGROUP BLOCK. */
  private commands: Redis | undefined;
  private readonly inFlight = new Set<Promise<void>>();

  constructor(private readonly opts: ResultsConsumerOptions) {
    this.queues = opts.queues ?? Object.values(QUEUES);
    this.keys = this.queues.map((q) => stageEventsKey(opts.prefix, q));
  }

  isRunning(): boolean {
    return this.running;
  }

  async start(): Promise<void> {
    await this.createGroups();
    this.commands = this.opts.redis.duplicate();
    this.running = true;
    this.loop = this.run();
  }

  /** From '0': outcomes already in a stream when the group is made are applied (applying is idempotent). */
  private async createGroups(): Promise<void> {
    await this.keepEvents(this.opts.redis);
    for (const key of this.keys) {
      await this.opts.redis.xgroup('CREATE', key, RESULTS_GROUP, '0', 'MKSTREAM').catch((err: Error) => {
        if (!/BUSYGROUP/.test(err.message)) throw err;
      });
    }
  }

  async stop(): Promise<void> {
    this.running = false;
    await this.loop;
    await Promise.all(this.inFlight);
    // DELCONSUMER drops the consumer's pending entries for good: leave a consumer that still has
    // some, so another reader claims them.
    for (const key of this.keys) {
      const pending = (await this.opts.redis.xpending(key, RESULTS_GROUP, '-', '+', 1, this.consumer).catch(() => [1])) as unknown[];
      if (pending.length === 0) await this.opts.redis.xgroup('DELCONSUMER', key, RESULTS_GROUP, this.consumer).catch(() => undefined);
    }
    await this.commands?.quit().catch(() => undefined);
  }

  private async run(): Promise<void> {
    const { redis, logger } = this.opts;
    const ids = this.keys.map(() => '>');
    while (this.running) {
      try {
        await this.claimAbandoned();
        const reply = (await redis.xreadgroup('GROUP', RESULTS_GROUP, this.consumer, 'COUNT', this.opts.batch ?? 500, 'BLOCK', this.opts.blockMs ?? 1000, 'STREAMS', ...this.keys, ...ids)) as StreamReply | null;
        const decoded = (reply ?? []).flatMap(([key, entries]) => entries.map((e) => this.decode(key, e)));
        // Read the next batch while this one is applied: a batch waits on its slowest run only.
        if (decoded.length) await this.track(this.process(decoded));
      } catch (err) {
        if (!this.running) break;
        // A stream deleted under us (e.g. a queue obliterated) takes its group with it.
        if (/NOGROUP/.test(String((err as Error).message))) await this.createGroups().catch(() => undefined);
        else logger.warn({ err }, 'stage event streams read failed; retrying');
        await new Promise((r) => setTimeout(r, 500));
      }
    }
  }

  /** A stream entry → the run input it carries, if any. */
  private decode(key: string, [id, fields]: Entry): Decoded {
    if (!fields) return { key, id };
    const field = (name: string) => {
      for (let i = 0; i + 1 < fields.length; i += 2) if (fields[i] === name) return fields[i + 1];
      return undefined;
    };
    const event = field('event');
    if (event !== 'completed' && event !== 'failed') return { key, id };
    const jobId = field('jobId') ?? '';
    const runId = runIdOfJob(jobId);
    if (!runId) return { key, id }; // not a stage job of ours
    if (event === 'failed') return { key, id, item: { runId, input: { type: 'stage-lost', jobId, reason: field('failedReason') || 'the stage job failed' } } };
    const { input, problem } = completionInput(jobId, safeJson(field('returnvalue')));
    if (problem) this.opts.logger.error({ jobId, problem }, 'stage job completed without a valid result');
    return { key, id, item: { runId, input } };
  }

  private async keepEvents(redis: Redis): Promise<void> {
    await Promise.all(this.queues.map((q) => keepStageEvents(redis, this.opts.prefix, q)));
  }

  private async track(work: Promise<void>): Promise<void> {
    const p = work.catch((err) => this.opts.logger.warn({ err }, 'applying results failed; they will be claimed again')).finally(() => this.inFlight.delete(p));
    this.inFlight.add(p);
    if (this.inFlight.size >= (this.opts.maxInFlight ?? 8)) await Promise.race(this.inFlight);
  }

  private async claimAbandoned(): Promise<void> {
    const idle = this.opts.claimIdleMs ?? 30_000;
    if (Date.now() - this.lastClaim < Math.min(idle, 5000)) return;
    this.lastClaim = Date.now();
    await this.keepEvents(this.commands!);
    for (const key of this.keys) {
      const reply = (await this.commands!.xautoclaim(key, RESULTS_GROUP, this.consumer, idle, this.claimCursors.get(key) ?? '0-0', 'COUNT', 500)) as [string, Entry[], string[]?];
      this.claimCursors.set(key, reply?.[0] ?? '0-0');
      const trimmed = reply?.[2] ?? [];
      // BullMQ trims its event streams; an outcome trimmed before it was applied is settled by the reconciler.
      if (trimmed.length) this.opts.logger.warn({ stream: key, count: trimmed.length }, 'pending stage events were trimmed before being applied; the reconciler settles them');
      const entries = (reply?.[1] ?? []).filter((e): e is [string, string[]] => Boolean(e?.[1]));
      if (entries.length === 0) continue;
      this.opts.logger.info({ stream: key, count: entries.length }, 'claimed abandoned stage events');
      const poisoned = await this.overDelivered(key, entries.map(([id]) => id));
      for (const [id, fields] of entries.filter(([id]) => poisoned.has(id))) {
        // An outcome that failed to apply this often will not apply: park it where a person can see it.
        this.opts.logger.error({ stream: key, id }, 'stage event dead-lettered after repeated failures');
        await this.commands!.multi().xadd(`${this.opts.prefix}:results-dead`, '*', 'stream', key, 'id', id, ...fields).xack(key, RESULTS_GROUP, id).exec();
      }
      await this.track(this.process(entries.filter(([id]) => !poisoned.has(id)).map((e) => this.decode(key, e))));
    }
    if (Date.now() - this.lastForget > 600_000) {
      this.lastForget = Date.now();
      await this.forgetIdleConsumers().catch((err) => this.opts.logger.warn({ err }, 'dropping idle readers failed'));
    }
  }

  /**
   * Readers killed without stop() stay in the group; drop those with nothing pending and long idle.
   * Checked and dropped in one script, so a reader that takes an entry in between is never dropped
   * with it (DELCONSUMER discards a consumer's pending entries).
   */
  private async forgetIdleConsumers(): Promise<void> {
    for (const key of this.keys) {
      await this.commands!.eval(FORGET_IDLE_CONSUMERS, 1, key, RESULTS_GROUP, this.consumer, this.opts.forgetConsumersIdleMs ?? 3_600_000);
    }
  }

  /** The claimed entries delivered more than MAX_DELIVERIES times (asked one by one: a range would also list others). */
  private async overDelivered(key: string, ids: string[]): Promise<Set<string>> {
    const pipeline = this.commands!.pipeline();
    for (const id of ids) pipeline.xpending(key, RESULTS_GROUP, id, id, 1);
    const replies = (await pipeline.exec()) ?? [];
    const rows = replies.flatMap(([err, rows]) => (err ? [] : (rows as [string, string, number, number][])));
    return new Set(rows.filter(([, , , deliveries]) => deliveries > MAX_DELIVERIES).map(([id]) => id));
  }

  private async process(decoded: Decoded[]): Promise<void> {
    if (decoded.length === 0) return;
    const items = decoded.flatMap((d) => (d.item ? [d.item] : []));
    // Inputs that failed to apply stay pending and are claimed again later; everything else is acknowledged.
    const failed = new Set(items.length ? await this.opts.orchestrator.handleInputs(items) : []);
    const done = new Map<string, string[]>();
    for (const d of decoded) {
      if (d.item && failed.has(d.item)) continue;
      const ids = done.get(d.key);
      if (ids) ids.push(d.id);
      else done.set(d.key, [d.id]);
    }
    if (done.size === 0) return;
    const ack = this.commands!.pipeline();
    for (const [key, ids] of done) ack.xack(key, RESULTS_GROUP, ...ids);
    await ack.exec();
  }
}

function safeJson(text: string | undefined): unknown {
  try {
    return text === undefined ? undefined : JSON.parse(text);
  } catch {
    return undefined;
  }
}
