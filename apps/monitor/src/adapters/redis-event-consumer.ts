import type { Redis } from 'ioredis';
import type { Logger } from '@conveyor/service-kit';
import { parseStreamEntry } from '../domain/stream-entry.js';
import type { RunEventHandler } from '../ports.js';

type Entry = [id: string, fields: string[] | null];

export interface EventConsumerOptions {
  /** Acks, claims and group administration. */
  redis: Redis;
  /** Dedicated to XREADGROUP BLOCK; disconnected to stop. */
  blocking: Redis;
  stream: string;
  group: string;
  consumer: string;
  handle: RunEventHandler;
  logger: Logger;
  blockMs?: number;
  batch?: number;
  /** Entries pending this long (their consumer died, or handling failed) are claimed and handled again. */
  claimIdleMs?: number;
  /** Default: half of claimIdleMs. */
  claimEveryMs?: number;
  /** Consumers of the group idle this long with nothing pending are removed. */
  forgetConsumerAfterMs?: number;
}

/**
 * Reads RunEvents from a Redis stream with a consumer group: at-least-once, every entry acked once
 * handled, malformed entries logged and acked (never retried, never fatal), and entries left pending
 * by dead consumers taken over with XAUTOCLAIM.
 */
export class RedisEventConsumer {
  private stopping = false;
  private loop: Promise<void> | undefined;
  private nextClaim = 0;

  constructor(private readonly opts: EventConsumerOptions) {}

  start(): void {
    this.loop ??= this.run();
  }

  isRunning(): boolean {
    return this.loop !== undefined && !this.stopping;
  }

  /** Interrupts the blocking read and waits (at most `ms`) for the entry being handled to finish. */
  async stop(ms = 5000): Promise<void> {
    this.stopping = true;
    this.opts.blocking.disconnect();
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([this.loop, new Promise((r) => (timer = setTimeout(r, ms)))]);
    clearTimeout(timer);
  }

  private async run(): Promise<void> {
    const { logger } = this.opts;
    while (!this.stopping) {
      try {
        await this.ensureGroup();
        while (!this.stopping) {
          if (Date.now() >= this.nextClaim) await this.claimStale();
          const entries = await this.read();
          for (const [id, fields] of entries) await this.handle(id, fields);
        }
      } catch (err) {
        if (this.stopping) break;
        logger.error({ err, stream: this.opts.stream }, 'event stream read failed; retrying');
        await new Promise((r) => setTimeout(r, 1000));
      }
    }
  }

  private async ensureGroup(): Promise<void> {
    try {
      // From the start of the stream: a new group replays what the stream still holds into history.
      await this.opts.redis.xgroup('CREATE', this.opts.stream, this.opts.group, '0', 'MKSTREAM');
      this.opts.logger.info({ stream: this.opts.stream, group: this.opts.group }, 'created consumer group');
    } catch (err) {
      if (!String((err as Error).message).includes('BUSYGROUP')) throw err;
    }
  }

  private async read(): Promise<Entry[]> {
    const { blocking, group, consumer, stream } = this.opts;
    const reply = (await blocking.xreadgroup(
      'GROUP', group, consumer, 'COUNT', this.opts.batch ?? 100, 'BLOCK', this.opts.blockMs ?? 5000, 'STREAMS', stream, '>',
    )) as [string, Entry[]][] | null;
    return reply?.[0]?.[1] ?? [];
  }

  private async handle(id: string, fields: string[] | null): Promise<void> {
    const { logger, redis, stream, group } = this.opts;
    const parsed = parseStreamEntry(fields ?? []);
    if (!parsed.ok) {
      logger.warn({ id, stream, reason: parsed.reason }, 'skipped malformed run event');
      await redis.xack(stream, group, id);
      return;
    }
    try {
      await this.opts.handle(parsed.event);
      await redis.xack(stream, group, id);
    } catch (err) {
      // Left pending: claimStale hands it to a consumer again once it has been idle claimIdleMs.
      logger.error({ err, id, type: parsed.event.type }, 'run event handling failed; will retry');
    }
  }

  private async claimStale(): Promise<void> {
    const { redis, stream, group, consumer } = this.opts;
    const idle = this.opts.claimIdleMs ?? 60_000;
    this.nextClaim = Date.now() + (this.opts.claimEveryMs ?? idle / 2);
    let cursor = '0-0';
    do {
      const [next, entries] = (await redis.xautoclaim(stream, group, consumer, idle, cursor, 'COUNT', 100)) as [string, Entry[], ...unknown[]];
      for (const [id, fields] of entries) if (id) await this.handle(id, fields);
      cursor = next;
    } while (cursor !== '0-0' && !this.stopping);
    await this.forgetIdleConsumers();
  }

  private async forgetIdleConsumers(): Promise<void> {
    const { redis, stream, group, consumer } = this.opts;
    const forgetAfter = this.opts.forgetConsumerAfterMs ?? 24 * 3600_000;
    const infos = (await redis.xinfo('CONSUMERS', stream, group)) as unknown[][];
    for (const info of infos) {
      const fields = new Map<string, unknown>();
      for (let i = 0; i + 1 < info.length; i += 2) fields.set(String(info[i]), info[i + 1]);
      const name = String(fields.get('name'));
      if (name !== consumer && Number(fields.get('pending')) === 0 && Number(fields.get('idle')) > forgetAfter) {
        await redis.xgroup('DELCONSUMER', stream, group, name);
      }
    }
  }
}
