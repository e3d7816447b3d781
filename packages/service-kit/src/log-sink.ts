import type { Redis } from 'ioredis';

/** Stage logs live in Redis, one string per stage job, readable while the stage runs. */
export function stageLogKey(prefix: string, jobId: string): string {
  return `${prefix}:log:${jobId}`;
}

export const STAGE_LOG_MAX_BYTES = 8 * 1024 * 1024;
const LOG_TTL_SECONDS = 30 * 24 * 3600;

export interface StageLog {
  write(text: string): void;
  /** Flushes what is buffered; the log stays readable for 30 days. */
  close(): Promise<void>;
}

/**
 * Buffers output and APPENDs it every `flushMs`; past STAGE_LOG_MAX_BYTES the rest is dropped with a
 * marker, so a runaway build cannot fill Redis. Callers mask secrets before writing.
 */
export function openStageLog(redis: Redis, prefix: string, jobId: string, flushMs = 200): StageLog {
  const key = stageLogKey(prefix, jobId);
  let buffer = '';
  let written = 0;
  let truncated = false;
  let chain: Promise<unknown> = Promise.resolve();
  const flush = () => {
    if (!buffer) return chain;
    let chunk = buffer;
    buffer = '';
    if (written + Buffer.byteLength(chunk) > STAGE_LOG_MAX_BYTES) {
      chunk = truncated ? '' : '\n[conveyor] log truncated: over 8 MiB\n';
      truncated = true;
    }
    if (!chunk) return chain;
    written += Buffer.byteLength(chunk);
    chain = chain.then(() => redis.multi().append(key, chunk).expire(key, LOG_TTL_SECONDS).exec()).catch(() => undefined);
    return chain;
  };
  const timer = setInterval(flush, flushMs);
  timer.unref();
  return {
    write(text: string) {
      if (truncated) return;
      buffer += text;
      if (buffer.length > 64 * 1024) void flush();
    },
    async close() {
      clearInterval(timer);
      await flush();
      await chain;
    },
  };
}
