import type { Redis } from 'ioredis';

/** Stage logs live in Redis, one string per stage job, readable while the stage runs. */
export function stageLogKey(prefix: string, jobId: string): string {
  return `${prefix}:log:${jobId}`;
}

/** The most a stage log keeps, marker included. */
export const STAGE_LOG_MAX_BYTES = 8 * 1024 * 1024;
/** Of a log over the limit, how much of its end is kept: the runner's last lines say how the stage ended. */
const STAGE_LOG_TAIL_BYTES = 1024 * 1024;
/** How often buffered output is appended, and (past the limit) how often the kept tail is rewritten; both also on close. */
const FLUSH_MS = 200;
const TAIL_FLUSH_MS = 1000;
const LOG_TTL_SECONDS = 30 * 24 * 3600;
/** The marker line is padded to this width, so the tail behind it can be rewritten in place. */
const MARKER_BYTES = 128;

export interface StageLog {
  write(text: string): void;
  /** Flushes what is buffered; the log stays readable for 30 days. */
  close(): Promise<void>;
}

/** The last `limit` bytes of what is fed to it, in memory. */
function tailKeeper(limit: number) {
  const chunks: Buffer[] = [];
  let held = 0;
  let seen = 0;
  return {
    get seen() {
      return seen;
    },
    push(bytes: Buffer) {
      chunks.push(bytes);
      held += bytes.length;
      seen += bytes.length;
      while (held - chunks[0]!.length >= limit) held -= chunks.shift()!.length;
    },
    bytes(): Buffer {
      const all = Buffer.concat(chunks, held);
      return all.subarray(Math.max(0, all.length - limit));
    },
  };
}

/** Where to cut `bytes` at or before `at` without splitting a UTF-8 character. */
function charBoundary(bytes: Buffer, at: number): number {
  let cut = Math.min(at, bytes.length);
  while (cut > 0 && cut < bytes.length && (bytes[cut]! & 0xc0) === 0x80) cut -= 1;
  return cut;
}

/**
 * The marker line and the kept tail, always MARKER_BYTES + tail.length long: its length never shrinks
 * as the tail is rewritten in place, so no stale bytes can remain behind it.
 */
function tailSegment(tail: Buffer, seen: number, head: number): Buffer {
  let skip = 0; // a character the tail's window cut into
  while (skip < tail.length && skip < 3 && (tail[skip]! & 0xc0) === 0x80) skip += 1;
  const kept = tail.length - skip;
  const line = `\n[conveyor] log truncated: ${seen - kept} bytes left out (kept the first ${head} and the last ${kept})`;
  return Buffer.concat([Buffer.from(`${line.padEnd(MARKER_BYTES + skip - 1)}\n`), tail.subarray(skip)]);
}

/**
 * Buffers output and APPENDs it every FLUSH_MS, so a runaway build cannot fill Redis: past
 * STAGE_LOG_MAX_BYTES the log keeps its head and its last STAGE_LOG_TAIL_BYTES, with a marker line
 * between them saying how much was left out. The tail is kept in memory and written behind the head
 * with SETRANGE, at most every TAIL_FLUSH_MS and on close: readers still GET one string. Callers mask
 * secrets before writing.
 */
export function openStageLog(redis: Redis, prefix: string, jobId: string): StageLog {
  const key = stageLogKey(prefix, jobId);
  const headLimit = STAGE_LOG_MAX_BYTES - STAGE_LOG_TAIL_BYTES - MARKER_BYTES;
  const tail = tailKeeper(STAGE_LOG_TAIL_BYTES);
  let buffer = '';
  let head = 0; // bytes appended so far, up to headLimit
  let headEnd = 0; // where the key's head ends, as Redis last reported it
  let headFull = false;
  let tailDirty = false;
  let tailWrittenAt = -Infinity;
  /** What an earlier delivery of the job left in the key past where this one's tail starts: overwritten, never left behind it. */
  let stale = 0;
  let chain: Promise<unknown> = Promise.resolve();
  const enqueue = (write: () => Promise<unknown>) => (chain = chain.then(write).catch(() => undefined));
  // A job delivered again writes on under the same key: the log's limit counts what is there already.
  enqueue(async () => {
    const existing = await redis.strlen(key);
    if (existing >= headLimit) {
      headFull = true;
      head = headEnd = headLimit;
      stale = existing - headLimit;
    } else head = headEnd = existing;
  });

  const appendHead = (text: string) => {
    head += Buffer.byteLength(text);
    const expected = head;
    enqueue(async () => {
      const replies = await redis.multi().append(key, text).expire(key, LOG_TTL_SECONDS).exec();
      const length = replies?.[0]?.[1];
      headEnd = typeof length === 'number' ? length : expected;
    });
  };
  const take = (text: string) => {
    if (!headFull && head + Buffer.byteLength(text) <= headLimit) return appendHead(text);
    const bytes = Buffer.from(text);
    const cut = headFull ? 0 : charBoundary(bytes, headLimit - head);
    if (cut > 0) appendHead(bytes.subarray(0, cut).toString());
    headFull = true;
    tail.push(bytes.subarray(cut));
    tailDirty = true;
  };
  const writeTail = () => {
    tailDirty = false;
    tailWrittenAt = Date.now();
    const bytes = tail.bytes();
    const seen = tail.seen;
    enqueue(() => {
      let segment = tailSegment(bytes, seen, headEnd);
      // Padded over what an earlier delivery's longer tail left (its length only ever grows from here).
      if (segment.length < stale) segment = Buffer.concat([segment, Buffer.from(`${' '.repeat(stale - segment.length - 1)}\n`)]);
      return redis.multi().setrange(key, headEnd, segment).expire(key, LOG_TTL_SECONDS).exec();
    });
  };
  // Taken in the chain, after the length of what is there was read.
  const flush = (closing = false) => {
    const text = buffer;
    buffer = '';
    enqueue(async () => {
      if (text) take(text);
      if (tailDirty && (closing || Date.now() - tailWrittenAt >= TAIL_FLUSH_MS)) writeTail();
    });
    return chain;
  };

  const timer = setInterval(flush, FLUSH_MS);
  timer.unref();
  return {
    write(text: string) {
      buffer += text;
      if (buffer.length > 64 * 1024) void flush();
    },
    async close() {
      clearInterval(timer);
      await flush(true);
      // A step may queue writes of its own: wait until nothing more is queued.
      for (let last = undefined as Promise<unknown> | undefined; last !== chain; ) await (last = chain);
    },
  };
}
