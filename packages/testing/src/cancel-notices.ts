import { randomUUID } from 'node:crypto';
import { Redis } from 'ioredis';
import { cancelChannel } from '@conveyor/contracts';

/** Records, in order, the cancel notices published for `prefix` (ADR 0007). */
export async function recordCancelNotices(url: string, prefix: string) {
  const listener = new Redis(url);
  const publisher = new Redis(url);
  const heard: string[] = [];
  await listener.subscribe(cancelChannel(prefix));
  listener.on('message', (_channel: string, jobId: string) => heard.push(jobId));
  return {
    /** The notices heard so far. */
    get notices(): readonly string[] {
      return heard;
    },
    /**
     * Every notice published before this call, once heard: a sentinel published now arrives after them
     * (pub/sub keeps order on a connection), so nothing sent earlier can still be on its way.
     */
    async settled(ms = 5000): Promise<string[]> {
      const sentinel = `sentinel-${randomUUID()}`;
      await publisher.publish(cancelChannel(prefix), sentinel);
      for (const deadline = Date.now() + ms; !heard.includes(sentinel); ) {
        if (Date.now() > deadline) throw new Error(`cancel notices not heard within ${ms} ms`);
        await new Promise((r) => setTimeout(r, 10));
      }
      heard.splice(heard.indexOf(sentinel), 1);
      return [...heard];
    },
    close(): void {
      listener.disconnect();
      publisher.disconnect();
    },
  };
}
