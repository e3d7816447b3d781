import { lookup } from 'node:dns/promises';
import { isIP } from 'node:net';
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
  return (await pingProblem(url, connectTimeout)) === undefined;
}

/**
 * Why the Redis at `url` does not answer PING (`connect ECONNREFUSED …`, `NOAUTH Authentication
 * required.`, `WRONGPASS …`), or undefined when it does.
 */
export async function pingProblem(url: string, connectTimeout = 2000): Promise<string | undefined> {
  // No ready check: a Redis that wants a password fails it, and then the ping says why.
  const client = new Redis(url, { lazyConnect: true, maxRetriesPerRequest: 0, enableReadyCheck: false, retryStrategy: () => null, connectTimeout });
  // A refused AUTH (a wrong password) comes as an error event; the connection then closes, and the
  // command's own error says only that.
  let first: Error | undefined;
  client.on('error', (err: Error) => (first ??= err));
  try {
    await client.connect();
    const answer = await client.ping();
    return answer === 'PONG' ? undefined : `it answered ${String(answer)}`;
  } catch (err) {
    return (first ?? (err instanceof Error ? err : new Error(String(err)))).message;
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

/** An address and port Redis is reached at. */
export interface RedisPeer {
  address: string;
  port: number;
}

/** Where Redis is, for the Redis fence (guardRedis, redis-fence.ts). */
export interface RedisWhereabouts {
  /** Set when the client reaches Redis through a UNIX socket (nothing to fence by address). */
  socketPath?: string;
  /**
   * The addresses the client asks for: the one its connection is to, and every address its host name
   * resolves to now (another connection may get another). Empty when neither could be told.
   */
  asked: RedisPeer[];
  /** Where the server says the connection arrived (CLIENT INFO's laddr: after any NAT), Redis 6.2 and later. */
  served?: RedisPeer;
}

/** Where `redis` (a client of this service's, made from REDIS_URL) reaches Redis. */
export async function redisWhereabouts(redis: Redis): Promise<RedisWhereabouts> {
  if (redis.options.path) return { socketPath: redis.options.path, asked: [] };
  await waitReady(redis, 30_000);
  const port = redis.options.port ?? 6379;
  const asked: RedisPeer[] = [];
  const { remoteAddress, remotePort } = redis.stream ?? {};
  if (remoteAddress && remotePort) asked.push({ address: remoteAddress, port: remotePort });
  // A name that does not resolve now (or not within 5 s) adds nothing: the connected address is the one in use.
  const resolved = await Promise.race([
    lookup(redis.options.host ?? 'localhost', { all: true }).catch(() => []),
    new Promise<[]>((r) => setTimeout(() => r([]), 5000).unref()),
  ]);
  for (const { address } of resolved) if (!asked.some((p) => p.address === address && p.port === port)) asked.push({ address, port });
  const info = (await redis.call('CLIENT', 'INFO').catch(() => '')) as string;
  const laddr = /(?:^|\s)laddr=(\S+)/.exec(String(info))?.[1];
  const served = laddr ? splitAddress(laddr) : undefined;
  return { asked, ...(served ? { served } : {}) };
}

/** `ip:port` or `[ipv6]:port` (or Redis's unbracketed `ipv6:port`). */
function splitAddress(text: string): RedisPeer | undefined {
  const at = text.lastIndexOf(':');
  const port = Number(text.slice(at + 1));
  const address = text.slice(0, at).replace(/^\[(.*)\]$/, '$1');
  return at > 0 && Number.isInteger(port) && port > 0 && isIP(address) ? { address, port } : undefined;
}
