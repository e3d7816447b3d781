import { hostname } from 'node:os';
import { randomUUID } from 'node:crypto';
import { StageResult } from '@conveyor/contracts';
import { resultsStreamKey, type Logger, type Redis } from '@conveyor/service-kit';
import type { Orchestrator } from '../orchestrator.js';

export const RESULTS_GROUP = 'orchestrator';
const MAX_DELIVERIES = 10;
type Entry = [id: string, fields: string[]];

export interface ResultsConsumerOptions {
  /** A dedicated connection: XREADGROUP BLOCK holds it. */
  redis: Redis;
  prefix: string;
  orchestrator: Orchestrator;
  logger: Logger;
  batch?: number;
  blockMs?: number;
  /** Entries a dead reader left unacknowledged this long are claimed by a live one. */
  claimIdleMs?: number;
  /** Batches applied at once. */
  maxInFlight?: number;
}

/**
 * Reads StageResults from the results stream with a consumer group, applies them (in order within a
 * run, runs in parallel), then acknowledges and deletes them. An entry whose apply failed stays
 * pending and is claimed again after `claimIdleMs`.
 */
export class ResultsConsumer {
  private readonly key: string;
  private readonly consumer = `${hostname()}-${process.pid}-${randomUUID().slice(0, 8)}`;
  private running = false;
  private loop: Promise<void> | undefined;
  private lastClaim = 0;
  private claimCursor = '0-0';
  /** Acks and claims go on their own connection: the reading one is held by XREADGROUP BLOCK. */
  private commands: Redis | undefined;
  private readonly inFlight = new Set<Promise<void>>();

  constructor(private readonly opts: ResultsConsumerOptions) {
    this.key = resultsStreamKey(opts.prefix);
  }

  isRunning(): boolean {
    return this.running;
  }

  async start(): Promise<void> {
    await this.opts.redis.xgroup('CREATE', this.key, RESULTS_GROUP, '0', 'MKSTREAM').catch((err: Error) => {
      if (!/BUSYGROUP/.test(err.message)) throw err;
    });
    this.commands = this.opts.redis.duplicate();
    this.running = true;
    this.loop = this.run();
  }

  async stop(): Promise<void> {
    this.running = false;
    await this.loop;
    await Promise.all(this.inFlight);
    // DELCONSUMER drops the consumer's pending entries for good: leave a consumer that still has
    // some, so another reader claims them.
    const pending = (await this.opts.redis.xpending(this.key, RESULTS_GROUP, '-', '+', 1, this.consumer).catch(() => [1])) as unknown[];
    if (pending.length === 0) await this.opts.redis.xgroup('DELCONSUMER', this.key, RESULTS_GROUP, this.consumer).catch(() => undefined);
    await this.commands?.quit().catch(() => undefined);
  }

  private async run(): Promise<void> {
    const { redis, logger } = this.opts;
    while (this.running) {
      try {
        await this.claimAbandoned();
        const reply = (await redis.xreadgroup('GROUP', RESULTS_GROUP, this.consumer, 'COUNT', this.opts.batch ?? 500, 'BLOCK', this.opts.blockMs ?? 1000, 'STREAMS', this.key, '>')) as [string, Entry[]][] | null;
        const entries = reply?.[0]?.[1] ?? [];
        // Read the next batch while this one is applied: a batch waits on its slowest run only.
        if (entries.length) await this.track(this.process(entries));
      } catch (err) {
        if (!this.running) break;
        logger.warn({ err }, 'results stream read failed; retrying');
        await new Promise((r) => setTimeout(r, 500));
      }
    }
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
    const reply = (await this.commands!.xautoclaim(this.key, RESULTS_GROUP, this.consumer, idle, this.claimCursor, 'COUNT', 500)) as [string, Entry[], string[]?];
    this.claimCursor = reply?.[0] ?? '0-0';
    const entries = (reply?.[1] ?? []).filter((e) => e && e[1]);
    if (entries.length === 0) return this.forgetIdleConsumers(idle);
    this.opts.logger.info({ count: entries.length }, 'claimed abandoned results');
    const poisoned = await this.overDelivered(entries.map(([id]) => id));
    for (const [id, fields] of entries.filter(([id]) => poisoned.has(id))) {
      // A result that failed to apply this often will not apply: park it where a person can see it.
      this.opts.logger.error({ id }, 'result dead-lettered after repeated failures');
      await this.commands!.multi().xadd(`${this.key}-dead`, '*', ...fields).xack(this.key, RESULTS_GROUP, id).xdel(this.key, id).exec();
    }
    await this.track(this.process(entries.filter(([id]) => !poisoned.has(id))));
  }

  /** Readers killed without stop() stay in the group; drop those with nothing pending and long idle. */
  private async forgetIdleConsumers(idleMs: number): Promise<void> {
    const consumers = (await this.commands!.xinfo('CONSUMERS', this.key, RESULTS_GROUP)) as unknown[][];
    for (const row of consumers) {
      const info = Object.fromEntries(Array.from({ length: row.length / 2 }, (_, i) => [row[2 * i], row[2 * i + 1]]));
      if (info.name !== this.consumer && Number(info.pending) === 0 && Number(info.idle) > Math.max(idleMs, 3_600_000)) {
        await this.commands!.xgroup('DELCONSUMER', this.key, RESULTS_GROUP, String(info.name));
      }
    }
  }

  private async overDelivered(ids: string[]): Promise<Set<string>> {
    const rows = (await this.commands!.xpending(this.key, RESULTS_GROUP, ids[0]!, ids.at(-1)!, ids.length)) as [string, string, number, number][];
    return new Set(rows.filter(([, , , deliveries]) => deliveries > MAX_DELIVERIES).map(([id]) => id));
  }

  private async process(entries: Entry[]): Promise<void> {
    if (entries.length === 0) return;
    const results: { id: string; result: StageResult }[] = [];
    const done: string[] = [];
    for (const [id, fields] of entries) {
      const parsed = StageResult.safeParse(safeJson(fields[fields.indexOf('result') + 1]));
      if (parsed.success) results.push({ id, result: parsed.data });
      else {
        this.opts.logger.error({ id, issues: parsed.error.issues }, 'malformed stage result dropped');
        done.push(id);
      }
    }
    // Results that failed to apply stay pending and are claimed again later.
    const failed = new Set(await this.opts.orchestrator.handleResults(results.map((r) => r.result)));
    done.push(...results.filter((r) => !failed.has(r.result)).map((r) => r.id));
    if (done.length) await this.commands!.multi().xack(this.key, RESULTS_GROUP, ...done).xdel(this.key, ...done).exec();
  }
}

function safeJson(text: string | undefined): unknown {
  try {
    return text === undefined ? undefined : JSON.parse(text);
  } catch {
    return undefined;
  }
}
