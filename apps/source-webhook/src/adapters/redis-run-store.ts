import { CANCEL_NOTICE_WINDOW_MS, CANCELLED_MARK_TTL_SECONDS, cancelChannel, cancelledJobKey, cancelNoticesKey, EVENTS_STREAM, isTerminalRun, Run, type RunEvent } from '@conveyor/contracts';
import type { Redis } from 'ioredis';
import type { CreateOutcome, DeliveryDecision, RunStore, RunUpdate } from '../ports.js';

interface Scripts {
  conveyorCreateRun(...args: (string | number)[]): Promise<number | string>;
  conveyorUpdateRuns(...args: (string | number)[]): Promise<number[]>;
  conveyorActiveRuns(...args: string[]): Promise<string[]>;
}

const EVENTS_MAXLEN = 10_000;
const DELIVERY_TTL_SECONDS = 7 * 24 * 3600;

/** Lua: folds the active set an earlier version kept at `legacy` (only a SET there is one) into `active`, and deletes it. */
const FOLD = `
local function fold(active, legacy)
  if redis.call('TYPE', legacy).ok == 'set' then
    redis.call('SUNIONSTORE', active, active, legacy)
    redis.call('DEL', legacy)
  end
end
`;

/**
 * Atomically: refuse a webhook delivery already decided (returning its decision) or a run id that
 * exists (0); otherwise write the run, its plan and indexes, append its events, record the decision.
 */
const CREATE_RUN = `${FOLD}
local runKey, activeKey, pipelineRunsKey, eventsKey, deliveryKey, pipelinesKey = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local version, json, plan, runId, score, maxlen, decision, ttl, pipeline, terminal = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9], ARGV[10]
if decision ~= '' then
  local seen = redis.call('GET', deliveryKey)
  if seen then return seen end
end
if redis.call('EXISTS', runKey) == 1 then return 0 end
-- A pipeline named active: its index is where earlier versions kept the active set (see ACTIVE_RUNS), which
-- one still running may have made again. Folded in first, so the ZADD below cannot fail half-way.
fold(activeKey, pipelineRunsKey)
redis.call('HSET', runKey, 'version', version, 'json', json, 'plan', plan)
redis.call('ZADD', pipelineRunsKey, score, runId)
redis.call('SADD', pipelinesKey, pipeline)
-- A run may end as it is created (a pipeline variable it cannot have): it is then never active.
if terminal ~= '1' then redis.call('SADD', activeKey, runId) end
for i = 11, #ARGV do
  redis.call('XADD', eventsKey, 'MAXLEN', '~', maxlen, '*', 'event', ARGV[i])
end
if decision ~= '' then redis.call('SET', deliveryKey, decision, 'EX', ttl) end
return 1
`;

/**
 * Compare-and-set of many runs at once: KEYS are the active set, the events stream, then one key per
 * run; ARGV is the events' trim length, the cancel notices' log key, channel, now (ms), window (ms) and
 * the marks' lifetime (s), then per run: expected version, new version, JSON, id, terminal flag, event
 * count, count of jobs it stops, its events, then the stopped jobs' mark keys and ids. Each run is
 * written (1) or refused (0) on its own. The jobs a transition stops (a cancel) are marked and
 * announced in the same step as the transition (ADR 0007): an orchestrator that dies just after it
 * leaves no cancelled run whose work was never told; marked first, so a refused write changes nothing.
 */
const UPDATE_RUNS = `
local activeKey, eventsKey, maxlen = KEYS[1], KEYS[2], ARGV[1]
local noticesKey, channel, now, window, ttl = ARGV[2], ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6]
local saved = {}
local a = 7
for k = 3, #KEYS do
  local expected, version, json, runId, terminal, n, m = ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4], tonumber(ARGV[a + 5]), tonumber(ARGV[a + 6])
  a = a + 7
  if redis.call('HGET', KEYS[k], 'version') == expected then
    for j = a + n, a + n + 2 * m - 1, 2 do
      redis.call('SET', ARGV[j], '1', 'EX', ttl)
      redis.call('ZADD', noticesKey, now, ARGV[j + 1])
      redis.call('PUBLISH', channel, ARGV[j + 1])
    end
    if m > 0 then
      redis.call('ZREMRANGEBYSCORE', noticesKey, '-inf', now - window)
      redis.call('PEXPIRE', noticesKey, window)
    end
    redis.call('HSET', KEYS[k], 'version', version, 'json', json)
    if terminal == '1' then redis.call('SREM', activeKey, runId) else redis.call('SADD', activeKey, runId) end
    for i = a, a + n - 1 do
      redis.call('XADD', eventsKey, 'MAXLEN', '~', maxlen, '*', 'event', ARGV[i])
    end
    saved[#saved + 1] = 1
  else
    saved[#saved + 1] = 0
  end
  a = a + n + 2 * m
end
return saved
`;

/**
 * The active set, after folding into it the one earlier versions kept at `runs:active`, where a
 * pipeline named `active` now keeps its runs. Only a SET there is theirs (a pipeline's index is a
 * sorted set): its ids are added and it is deleted in one step, so no write to it falls between the
 * two. Old replicas still running during an upgrade may create that SET again: each call folds in what
 * they added, and costs one TYPE when there is nothing to fold.
 */
const ACTIVE_RUNS = `${FOLD}
local activeKey, legacyKey = KEYS[1], KEYS[2]
fold(activeKey, legacyKey)
return redis.call('SMEMBERS', activeKey)
`;

/** The hash of one run (fields `version`, `json`, `plan`): written here, also read by retention. */
export function runKey(prefix: string, runId: string): string {
  return `${prefix}:run:${runId}`;
}

/** A pipeline's runs, scored by creation time (ms). */
export function runIndexKey(prefix: string, pipeline: string): string {
  return `${prefix}:runs:${pipeline}`;
}

/** Runs not yet terminal. Not under `runs:`, where every pipeline name makes a key of its own. */
export function activeRunsKey(prefix: string): string {
  return `${prefix}:active-runs`;
}

/** The pipelines that have (or had) runs, deleted ones included: what run history retention walks. */
export function runPipelinesKey(prefix: string): string {
  return `${prefix}:run-pipelines`;
}

/** Set once the pipelines of runs stored before `run-pipelines` existed were found (by a walk of the keys). */
export function runPipelinesListedKey(prefix: string): string {
  return `${prefix}:run-pipelines:listed`;
}

/**
 * Run records in Redis: a hash per run (version, the run's JSON without its plan, and the plan, which
 * never changes and so is written once), a sorted set per pipeline, a set of active runs.
 */
export class RedisRunStore implements RunStore {
  constructor(
    private readonly redis: Redis,
    private readonly prefix: string,
  ) {
    redis.defineCommand('conveyorCreateRun', { numberOfKeys: 6, lua: CREATE_RUN });
    // The key count varies with the batch: it is the first argument.
    redis.defineCommand('conveyorUpdateRuns', { lua: UPDATE_RUNS });
    redis.defineCommand('conveyorActiveRuns', { numberOfKeys: 2, lua: ACTIVE_RUNS });
  }

  private get scripts(): Scripts {
    return this.redis as unknown as Scripts;
  }

  private key(...parts: string[]): string {
    return [this.prefix, ...parts].join(':');
  }

  private get activeKey(): string {
    return activeRunsKey(this.prefix);
  }

  async nextRunNumber(pipeline: string): Promise<number> {
    return this.redis.incr(this.key('pipeline', pipeline, 'seq'));
  }

  async get(runId: string): Promise<Run | undefined> {
    const replies = await this.redis.pipeline().hmget(runKey(this.prefix, runId), 'json', 'plan').sismember(this.activeKey, runId).exec();
    const [[readErr, fields], [listErr, listed]] = replies as [[Error | null, (string | null)[]], [Error | null, number]];
    if (readErr || listErr) throw readErr ?? listErr;
    const [json, plan] = fields;
    if (!json) return undefined;
    const run = parseRun(json, plan ?? null);
    // A run stored before the plan had a field of its own carries it in its JSON: give it the field
    // now, before a transition rewrites the JSON without it. Every update follows a read like this
    // one (the orchestrator caches only runs it stored itself).
    if (!plan) await this.redis.hsetnx(runKey(this.prefix, runId), 'plan', JSON.stringify(run.plan));
    // Ended, yet listed as active: during an upgrade a replica of an earlier version ended it and took it
    // out of `runs:active` only, or it was folded in from there after it ended. The reconciler reads
    // every listed run, so it leaves the list here.
    if (listed === 1 && isTerminalRun(run)) await this.redis.srem(this.activeKey, runId);
    return run;
  }

  async create(run: Run, events: RunEvent[], delivery?: DeliveryDecision): Promise<CreateOutcome> {
    const reply = await this.scripts.conveyorCreateRun(
      runKey(this.prefix, run.id),
      this.activeKey,
      runIndexKey(this.prefix, run.pipeline),
      this.key(EVENTS_STREAM),
      delivery ? this.deliveryKey(delivery.key) : this.key('delivery', '-'),
      runPipelinesKey(this.prefix),
      run.version,
      stateJson(run),
      JSON.stringify(run.plan),
      run.id,
      Date.parse(run.createdAt),
      EVENTS_MAXLEN,
      delivery ? JSON.stringify(delivery.decision) : '',
      DELIVERY_TTL_SECONDS,
      run.pipeline,
      isTerminalRun(run) ? '1' : '0',
      ...events.map((e) => JSON.stringify(e)),
    );
    if (reply === 1) return { created: true };
    if (typeof reply === 'string') return { created: false, seenDecision: JSON.parse(reply) as DeliveryDecision['decision'] };
    return { created: false };
  }

  async update(updates: readonly RunUpdate[]): Promise<boolean[]> {
    if (updates.length === 0) return [];
    const keys = [this.activeKey, this.key(EVENTS_STREAM)];
    const args: (string | number)[] = [EVENTS_MAXLEN, cancelNoticesKey(this.prefix), cancelChannel(this.prefix), Date.now(), CANCEL_NOTICE_WINDOW_MS, CANCELLED_MARK_TTL_SECONDS];
    for (const { run, expectedVersion, events, stopJobs = [] } of updates) {
      keys.push(runKey(this.prefix, run.id));
      args.push(expectedVersion, run.version, stateJson(run), run.id, isTerminalRun(run) ? '1' : '0', events.length, stopJobs.length);
      for (const e of events) args.push(JSON.stringify(e));
      for (const jobId of stopJobs) args.push(cancelledJobKey(this.prefix, jobId), jobId);
    }
    const reply = await this.scripts.conveyorUpdateRuns(keys.length, ...keys, ...args);
    return reply.map((r) => r === 1);
  }

  private deliveryKey(key: string): string {
    return this.key('delivery', key);
  }

  async deliveryDecision(key: string): Promise<DeliveryDecision['decision'] | undefined> {
    const seen = await this.redis.get(this.deliveryKey(key));
    return seen ? (JSON.parse(seen) as DeliveryDecision['decision']) : undefined;
  }

  /** Records a decision that created no run (e.g. filtered out), once per delivery. */
  async recordDelivery(delivery: DeliveryDecision): Promise<DeliveryDecision['decision'] | undefined> {
    const key = this.deliveryKey(delivery.key);
    const set = await this.redis.set(key, JSON.stringify(delivery.decision), 'EX', DELIVERY_TTL_SECONDS, 'NX');
    if (set === 'OK') return undefined;
    return this.deliveryDecision(delivery.key);
  }

  async listByPipeline(pipeline: string, limit: number, before?: string): Promise<RunPage> {
    const key = runIndexKey(this.prefix, pipeline);
    let ids: string[];
    let last: { score: string; id: string } | undefined;
    if (before === undefined) {
      const rows = await this.redis.zrevrange(key, 0, limit, 'WITHSCORES');
      ids = pairs(rows).map((r) => r.id);
      last = pairs(rows)[limit - 1];
    } else {
      // Runs are scored by creation time; one millisecond can hold several, ordered by id (descending).
      const cursor = parseCursor(before);
      if (!cursor) throw new RangeError('not a cursor of this list');
      const after: { score: string; id: string }[] = [];
      for (let offset = 0; after.length <= limit; ) {
        const rows = pairs(await this.redis.zrevrangebyscore(key, cursor.score, '-inf', 'WITHSCORES', 'LIMIT', offset, limit + 1));
        if (rows.length === 0) break;
        offset += rows.length;
        after.push(...rows.filter((r) => Number(r.score) < Number(cursor.score) || r.id < cursor.id));
      }
      ids = after.slice(0, limit + 1).map((r) => r.id);
      last = after[limit - 1];
    }
    const page = ids.slice(0, limit);
    const runs: RunPage = [];
    const unreadable: string[] = [];
    (await this.readMany(page)).forEach((r, i) => {
      // A record that does not parse is named, not served, and does not hide the others; Redis failing is the request's failure.
      if (r instanceof RecordParseError) unreadable.push(page[i]!);
      else if (r instanceof Error) throw r;
      else if (r) runs.push(r);
    });
    if (unreadable.length) runs.unreadable = unreadable;
    if (ids.length > limit && last) runs.next = Buffer.from(`${last.score}:${last.id}`).toString('base64url');
    return runs;
  }

  async activeRunIds(): Promise<string[]> {
    return this.scripts.conveyorActiveRuns(this.activeKey, this.key('runs', 'active'));
  }


  /** These runs in one round trip: each parsed, undefined when it has no record, or the error of its read or its parse. */
  async readMany(ids: readonly string[]): Promise<(Run | Error | undefined)[]> {
    if (ids.length === 0) return [];
    const pipeline = this.redis.pipeline();
    for (const id of ids) pipeline.hmget(runKey(this.prefix, id), 'json', 'plan');
    const replies = (await pipeline.exec()) ?? [];
    return replies.map(([err, fields], i) => {
      const id = ids[i]!;
      const [json, plan] = fields as [string | null, string | null];
      if (err) return err;
      if (!json) return undefined;
      try {
        return parseRun(json, plan);
      } catch (parseErr) {
        return new RecordParseError(id, parseErr);
      }
    });
  }
}

/** A page of a pipeline's runs: `next` continues it; `unreadable` names runs whose record does not parse (left out). */
export type RunPage = Run[] & { next?: string; unreadable?: string[] };

/** A run record that is there but does not parse (written by another version, or damaged). */
export class RecordParseError extends Error {
  override name = 'RecordParseError';
  constructor(
    readonly runId: string,
    cause: unknown,
  ) {
    super(`run ${runId}: its stored record does not parse`, { cause });
  }
}

/** The run as stored on every transition: without its plan, which is written once. */
function stateJson(run: Run): string {
  // Spreading then setting a key the run already has stays on V8's fast path; undefined is left out.
  return JSON.stringify({ ...run, plan: undefined });
}

/**
 * Never trust what comes out of Redis: parse it. The plan has its own field; a run stored before
 * that (and before jobs were rebuilt from the run) has it in its JSON, with an `outbox` that is ignored.
 */
function parseRun(json: string, plan: string | null): Run {
  const stored = JSON.parse(json) as Record<string, unknown>;
  return Run.parse(plan ? Object.assign(stored, { plan: JSON.parse(plan) as unknown }) : stored);
}

/** ZRANGE … WITHSCORES replies, as members with their scores. */
function pairs(rows: string[]): { id: string; score: string }[] {
  const out: { id: string; score: string }[] = [];
  for (let i = 0; i + 1 < rows.length; i += 2) out.push({ id: rows[i]!, score: rows[i + 1]! });
  return out;
}

function parseCursor(text: string): { score: string; id: string } | undefined {
  const m = /^(\d{1,16}):([a-z0-9-]{8,81})$/.exec(Buffer.from(text, 'base64url').toString('utf8'));
  return m ? { score: m[1]!, id: m[2]! } : undefined;
}
