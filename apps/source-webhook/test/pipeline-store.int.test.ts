import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PipelineDefinition } from '@conveyor/contracts';
import { testRedis, uniquePrefix } from '@conveyor/testing';
import { RedisPipelineStore } from '../src/adapters/redis-pipeline-store.js';

let redis: Redis;
let other: Redis;
beforeAll(async () => {
  const { url } = await testRedis();
  redis = new Redis(url);
  other = new Redis(url);
});
afterAll(async () => {
  redis.disconnect();
  other.disconnect();
  await (await testRedis()).stop();
});

const definition = (secret?: string, branch = 'main') =>
  PipelineDefinition.parse({ name: 'shop', source: { provider: 'github', repository: 'https://example.com/shop.git', branch, ...(secret ? { webhookSecret: secret } : {}) }, stages: [{ name: 'Build', type: 'build' }] });

/** A store whose next read of a definition is followed, before its write, by `meanwhile` (another request's write). */
function storeWithWriteBetween(prefix: string, meanwhile: () => Promise<unknown>): RedisPipelineStore {
  const store = new RedisPipelineStore(redis, prefix);
  const get = redis.get.bind(redis);
  let once = true;
  (redis as unknown as { get: (key: string) => Promise<string | null> }).get = async (key: string) => {
    const value = await get(key);
    if (once) {
      once = false;
      await meanwhile();
    }
    return value;
  };
  return store;
}

describe('RedisPipelineStore.put', () => {
  it('a definition without a secret keeps the stored one; one with a secret replaces it', async () => {
    const store = new RedisPipelineStore(redis, uniquePrefix('pl'));
    expect(await store.put(definition('first-secret-0123456789'))).toMatchObject({ created: true });
    const edited = await store.put(definition(undefined, 'release'));
    expect(edited.created).toBe(false);
    expect(edited.definition.source.webhookSecret).toBe('first-secret-0123456789');
    expect((await store.get('shop'))?.source).toMatchObject({ branch: 'release', webhookSecret: 'first-secret-0123456789' });
    await store.put(definition('second-secret-0123456789'));
    expect((await store.get('shop'))?.source.webhookSecret).toBe('second-secret-0123456789');
  });

  it('never writes back a secret rotated meanwhile: the write is made again on the definition as it is now', async () => {
    const prefix = uniquePrefix('pl');
    await new RedisPipelineStore(other, prefix).put(definition('old-secret-0123456789'));
    // Between this request's read and its write, another rotates the secret.
    const store = storeWithWriteBetween(prefix, () => new RedisPipelineStore(other, prefix).put(definition('rotated-secret-0123456789')));
    const stored = await store.put(definition(undefined, 'release'));
    expect(stored.definition.source.webhookSecret).toBe('rotated-secret-0123456789');
    expect((await new RedisPipelineStore(other, prefix).get('shop'))?.source).toMatchObject({ branch: 'release', webhookSecret: 'rotated-secret-0123456789' });
  });

  it('never brings back the secret of a pipeline deleted meanwhile: the edit then makes a new pipeline without one', async () => {
    const prefix = uniquePrefix('pl');
    await new RedisPipelineStore(other, prefix).put(definition('old-secret-0123456789'));
    const store = storeWithWriteBetween(prefix, () => new RedisPipelineStore(other, prefix).remove('shop'));
    const stored = await store.put(definition(undefined, 'release'));
    expect(stored.created).toBe(true);
    expect(stored.definition.source.webhookSecret).toBeUndefined();
    expect((await new RedisPipelineStore(other, prefix).get('shop'))?.source.webhookSecret).toBeUndefined();
  });
});
