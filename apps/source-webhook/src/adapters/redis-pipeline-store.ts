import { PipelineDefinition } from '@conveyor/contracts';
import { ConflictError } from '@conveyor/service-kit';
import type { Redis } from 'ioredis';
import type { PipelineStore } from '../ports.js';
import { safeJson } from '../domain/json.js';

/** Pipeline definitions (with their write-only secrets) as JSON strings, plus a set of names. */
export class RedisPipelineStore implements PipelineStore {
  constructor(
    private readonly redis: Redis,
    private readonly prefix: string,
  ) {}

  private key(name: string): string {
    return `${this.prefix}:pipeline:${name}`;
  }

  async put(def: PipelineDefinition): Promise<boolean> {
    const replies = await this.redis.multi().set(this.key(def.name), JSON.stringify(def)).sadd(`${this.prefix}:pipelines`, def.name).exec();
    return replies?.[1]?.[1] === 1;
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
