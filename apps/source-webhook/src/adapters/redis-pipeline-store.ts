import { PipelineDefinition } from '@conveyor/contracts';
import { ConflictError, UnavailableError } from '@conveyor/service-kit';
import type { Redis } from 'ioredis';
import type { PipelineStore, StoredPipeline } from '../ports.js';
import { safeJson } from '../domain/json.js';

/**
 * Writes a definition and adds its name to the set. With ARGV[3] = '1' only if the stored value is still
 * ARGV[4] ('' for none): the write that keeps a stored secret must not land on a definition changed or
 * deleted since it was read. Returns SADD's answer (1: the pipeline is new), or -1 when refused.
 */
const PUT_PIPELINE = `
if ARGV[3] == '1' and (redis.call('GET', KEYS[1]) or '') ~= ARGV[4] then return -1 end
redis.call('SET', KEYS[1], ARGV[1])
return redis.call('SADD', KEYS[2], ARGV[2])
`;
const MAX_PUT_ATTEMPTS = 20;

/** Pipeline definitions (with their write-only secrets) as JSON strings, plus a set of names. */
export class RedisPipelineStore implements PipelineStore {
  private readonly scripts: { conveyorPutPipeline(...args: string[]): Promise<number> };

  constructor(
    private readonly redis: Redis,
    private readonly prefix: string,
  ) {
    redis.defineCommand('conveyorPutPipeline', { numberOfKeys: 2, lua: PUT_PIPELINE });
    this.scripts = redis as unknown as typeof this.scripts;
  }

  private key(name: string): string {
    return `${this.prefix}:pipeline:${name}`;
  }

  async put(def: PipelineDefinition): Promise<StoredPipeline> {
    const names = `${this.prefix}:pipelines`;
    if (def.source.webhookSecret) {
      const added = await this.scripts.conveyorPutPipeline(this.key(def.name), names, JSON.stringify(def), def.name, '0', '');
      return { created: added === 1, definition: def };
    }
    // The secret is write-only, so a GET-edit-POST round trip omits it: the stored one is kept, by a write
    // that lands only on the definition it was read from (read again when another write came between).
    for (let attempt = 0; attempt < MAX_PUT_ATTEMPTS; attempt++) {
      const before = await this.redis.get(this.key(def.name));
      const definition = withStoredSecret(def, before);
      const added = await this.scripts.conveyorPutPipeline(this.key(def.name), names, JSON.stringify(definition), def.name, '1', before ?? '');
      if (added !== -1) return { created: added === 1, definition };
    }
    throw new UnavailableError(`pipeline ${def.name} is being changed by other requests at the same time; try again`);
  }

  async get(name: string): Promise<PipelineDefinition | undefined> {
    const json = await this.redis.get(this.key(name));
    if (!json) return undefined;
    const parsed = PipelineDefinition.safeParse(safeJson(json));
    if (!parsed.success) {
      throw new ConflictError(`the stored definition of pipeline ${name} is no longer valid (${parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ')}); POST it again, corrected`);
    }
    return parsed.data;
  }

  async list(): Promise<PipelineDefinition[]> {
    const names = (await this.redis.smembers(`${this.prefix}:pipelines`)).sort();
    if (names.length === 0) return [];
    const values = await this.redis.mget(names.map((n) => this.key(n)));
    // One definition stored under an older, looser schema must not take every pipeline (and every
    // webhook) down with it: it is left out here, and GET of it says what is wrong (POST it again).
    return values.flatMap((json) => {
      const parsed = json ? PipelineDefinition.safeParse(safeJson(json)) : undefined;
      return parsed?.success ? [parsed.data] : [];
    });
  }

  async remove(name: string): Promise<boolean> {
    const replies = await this.redis.multi().del(this.key(name)).srem(`${this.prefix}:pipelines`, name).exec();
    return replies?.[0]?.[1] === 1;
  }
}

/**
 * `def` with the webhook secret of the definition stored as `stored`, when it has none of its own. A
 * stored definition that no longer validates is being replaced: its secret, if any, must come again.
 */
function withStoredSecret(def: PipelineDefinition, stored: string | null): PipelineDefinition {
  if (def.source.webhookSecret || stored === null) return def;
  const parsed = PipelineDefinition.safeParse(safeJson(stored));
  const secret = parsed.success ? parsed.data.source.webhookSecret : undefined;
  return secret ? { ...def, source: { ...def.source, webhookSecret: secret } } : def;
}
