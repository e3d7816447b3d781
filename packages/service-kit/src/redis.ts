import { Redis, type RedisOptions } from 'ioredis';

export type { Redis };

/**
 * `worker`: blocking commands and retries forever (BullMQ requires maxRetriesPerRequest null).
 * `producer`: fails fast when Redis is down or stops answering (2 s), so an HTTP caller gets 503 instead of
 * a hanging request (GitHub gives up after 10 s). Commands issued in the same tick share one round trip.
 */
export function createRedis(url: string, role: 'worker' | 'producer', extra: RedisOptions = {}): Redis {
  const options: RedisOptions =
    role === 'worker'
      ? { maxRetriesPerRequest: null, enableReadyCheck: true, ...extra }
      : { maxRetriesPerRequest: 1, enableOfflineQueue: false, connectTimeout: 2000, commandTimeout: 2000, enableAutoPipelining: true, ...extra };
  return new Redis(url, options);
}

/** Resolves once the client is ready, or rejects after `ms`. */
export async function waitReady(redis: Redis, ms = 5000): Promise<void> {
  if (redis.status === 'ready') return;
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => {
      cleanup();
      reject(new Error(`redis not ready after ${ms} ms`));
    }, ms);
    const onReady = () => {
      cleanup();
      resolve();
    };
    const cleanup = () => {
      clearTimeout(timer);
      redis.off('ready', onReady);
    };
    redis.on('ready', onReady);
  });
}

/** Whether the Redis at `url` answers PING (false, never a throw, when it cannot be reached or refuses). */
export async function pings(url: string, connectTimeout = 2000): Promise<boolean> {
  // No ready check: a Redis that wants a password fails it, and then the answer is just false.
  const client = new Redis(url, { lazyConnect: true, maxRetriesPerRequest: 0, enableReadyCheck: false, retryStrategy: () => null, connectTimeout });
  client.on('error', () => undefined);
  try {
    await client.connect();
    return (await client.ping()) === 'PONG';
  } catch {
    return false;
  } finally {
    client.disconnect();
  }
}

/**
 * Whether the Redis at `url` answers a client that gives no user or password: then any process that
 * reaches it (a build, on this host's network) can read and change every run and queue.
 */
export function answersWithoutPassword(url: string): Promise<boolean> {
  const anonymous = new URL(url);
  anonymous.username = '';
  anonymous.password = '';
  return pings(anonymous.toString());
}
