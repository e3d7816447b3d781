import { PipelineDefinition } from '@conveyor/contracts';
import type { Redis } from 'ioredis';
import type { PipelineStore } from '../ports.js';

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
    return json ? PipelineDefinition.parse(JSON.parse(json)) : undefined;
  }

  async list(): Promise<PipelineDefinition[]> {
    const names = (await this.redis.smembers(`${this.prefix}:pipelines`)).sort();
    if (names.length === 0) return [];
    const values = await this.redis.mget(names.map((n) => this.key(n)));
    return values.flatMap((json) => (json ? [PipelineDefinition.parse(JSON.parse(json))] : []));
  }

  async remove(name: string): Promise<boolean> {
    const replies = await this.redis.multi().del(this.key(name)).srem(`${this.prefix}:pipelines`, name).exec();
    return replies?.[0]?.[1] === 1;
  }
}
