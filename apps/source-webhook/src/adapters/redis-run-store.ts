import { EVENTS_STREAM, Run, type RunEvent } from '@conveyor/contracts';
import type { Redis } from 'ioredis';
import type { DeliveryDecision, RunStore, SaveOutcome } from '../ports.js';

const EVENTS_MAXLEN = 10_000;
const DELIVERY_TTL_SECONDS = 7 * 24 * 3600;

/**
 * Atomically: check the run's version (or that a new run does not exist, or that a webhook delivery
 * was not seen), write the run and its indexes, and append its events to the stream.
 * Returns 1 saved, 0 version conflict / run exists, or the stored decision JSON for a seen delivery.
 */
const SAVE_RUN = `
local runKey, activeKey, pipelineRunsKey, eventsKey, deliveryKey = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local expected, version, json, runId, score, terminal, maxlen, decision, ttl = tonumber(ARGV[1]), ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9]
if decision ~= '' then
  local seen = redis.call('GET', deliveryKey)
  if seen then return seen end
end
local current = redis.call('HGET', runKey, 'version')
if expected < 0 then
  if current then return 0 end
elseif tonumber(current) ~= expected then
  return 0
end
redis.call('HSET', runKey, 'version', version, 'json', json)
if expected < 0 then redis.call('ZADD', pipelineRunsKey, score, runId) end
if terminal == '1' then redis.call('SREM', activeKey, runId) else redis.call('SADD', activeKey, runId) end
for i = 10, #ARGV do
  redis.call('XADD', eventsKey, 'MAXLEN', '~', maxlen, '*', 'event', ARGV[i])
end
if decision ~= '' then redis.call('SET', deliveryKey, decision, 'EX', ttl) end
return 1
`;

/** Run records in Redis: a hash per run (version + JSON), a sorted set per pipeline, a set of active runs. */
export class RedisRunStore implements RunStore {
  constructor(
    private readonly redis: Redis,
    private readonly prefix: string,
  ) {
    redis.defineCommand('conveyorSaveRun', { numberOfKeys: 5, lua: SAVE_RUN });
  }

  private key(...parts: string[]): string {
    return [this.prefix, ...parts].join(':');
  }

  async nextRunNumber(pipeline: string): Promise<number> {
    return this.redis.incr(this.key('pipeline', pipeline, 'seq'));
  }

  async get(runId: string): Promise<Run | undefined> {
    const json = await this.redis.hget(this.key('run', runId), 'json');
    // Never trust what comes out of Redis: parse it.
    return json ? Run.parse(JSON.parse(json)) : undefined;
  }

  async save(run: Run, expectedVersion: number | 'new', events: RunEvent[], delivery?: DeliveryDecision): Promise<SaveOutcome> {
    const terminal = ['SUCCEEDED', 'FAILED', 'CANCELLED'].includes(run.status) ? '1' : '0';
    const reply = await (this.redis as unknown as { conveyorSaveRun: (...args: (string | number)[]) => Promise<number | string> }).conveyorSaveRun(
      this.key('run', run.id),
      this.key('runs', 'active'),
      this.key('runs', run.pipeline),
      this.key(EVENTS_STREAM),
      delivery ? this.deliveryKey(delivery.key) : this.key('delivery', '-'),
      expectedVersion === 'new' ? -1 : expectedVersion,
      run.version,
      JSON.stringify(run),
      run.id,
      Date.parse(run.createdAt),
      terminal,
      EVENTS_MAXLEN,
      delivery ? JSON.stringify(delivery.decision) : '',
      DELIVERY_TTL_SECONDS,
      ...events.map((e) => JSON.stringify(e)),
    );
    if (reply === 1) return { saved: true };
    if (typeof reply === 'string') return { saved: false, seenDecision: JSON.parse(reply) as DeliveryDecision['decision'] };
    return { saved: false };
  }

  private deliveryKey(key: string): string {
    return this.key('delivery', key);
  }

  /** Records a decision that created no run (e.g. filtered out), once per delivery. */
  async recordDelivery(delivery: DeliveryDecision): Promise<DeliveryDecision['decision'] | undefined> {
    const key = this.deliveryKey(delivery.key);
    const set = await this.redis.set(key, JSON.stringify(delivery.decision), 'EX', DELIVERY_TTL_SECONDS, 'NX');
    if (set === 'OK') return undefined;
    const seen = await this.redis.get(key);
    return seen ? (JSON.parse(seen) as DeliveryDecision['decision']) : undefined;
  }

  async listByPipeline(pipeline: string, limit: number): Promise<Run[]> {
    const ids = await this.redis.zrevrange(this.key('runs', pipeline), 0, limit - 1);
    return this.getMany(ids);
  }

  async activeRunIds(): Promise<string[]> {
    return this.redis.smembers(this.key('runs', 'active'));
  }

  private async getMany(ids: string[]): Promise<Run[]> {
    if (ids.length === 0) return [];
    const pipeline = this.redis.pipeline();
    for (const id of ids) pipeline.hget(this.key('run', id), 'json');
    const replies = (await pipeline.exec()) ?? [];
    return replies.flatMap(([err, json]) => (err || typeof json !== 'string' ? [] : [Run.parse(JSON.parse(json))]));
  }
}
