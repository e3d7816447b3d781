import { once } from 'node:events';
import { Worker } from 'node:worker_threads';
import { describeBytes } from '@conveyor/artifacts';
import { openSelectedFile, type ResolvedFiles } from './globs.js';
import { JUnitError, MAX_JUNIT_BYTES, type JUnitSummary } from './junit-parse.mjs';
import type { BuildUser } from './shell-process.js';

export { JUnitError, MAX_JUNIT_BYTES, parseJUnit, type JUnitFailure, type JUnitSummary } from './junit-parse.mjs';

/**
 * What reading a build's JUnit reports may cost. Parsing is synchronous and its cost is the
 * report's to choose: a 48 MB `<testsuite a0="" a1="" …/>` took fast-xml-parser 92 s and 3.4 GB
 * in the service's main thread, whose BullMQ lock renewals then stopped. So reports are read and
 * parsed in a worker_thread, within these limits. A dense real report of 50 MB (900k testcases)
 * parses in 6 to 9 s within the 512 MB heap.
 */
export const JUNIT_LIMITS = {
  /** Bytes in one report: checked on the open file before it is read, and again while reading. */
  maxFileBytes: MAX_JUNIT_BYTES,
  /** Bytes in all the reports one JUnitReader reads (one test stage), checked before each is read. */
  maxTotalBytes: 200 * 1024 * 1024,
  /** Time to read and parse one report; then the thread is terminated. */
  timeoutMs: 60_000,
  /** V8 heap (old generation) of the parsing thread; past it the thread ends. */
  maxHeapMb: 512,
};
export type JUnitLimits = typeof JUNIT_LIMITS;

const WORKER = new URL('./junit-worker.mjs', import.meta.url);

type Reply = { summary: JUnitSummary } | { error: string };

/**
 * Reads the JUnit reports of one test stage, one at a time, in a worker_thread of its own: the
 * main thread only opens and checks each file (openSelectedFile) and hands the thread its
 * descriptor, so it never holds the text, never parses, and stays free for lock renewals and
 * HTTP. A report over a limit fails with a JUnitError saying which limit; the thread is then
 * replaced for the next report. Close the reader when done.
 */
export class JUnitReader {
  private worker: Worker | undefined;
  private totalBytes = 0;
  private queue: Promise<unknown> = Promise.resolve();

  constructor(
    private readonly limits: JUnitLimits = JUNIT_LIMITS,
    /** Aborted: the parse under way is ended (its thread terminated), and no other begins. */
    private readonly signal?: AbortSignal,
  ) {}

  /** Counts one of the selected files; `user` is the build's (see openSelectedFile). */
  read(files: ResolvedFiles, rel: string, user?: BuildUser): Promise<JUnitSummary> {
    const next = this.queue.then(() => this.readNow(files, rel, user));
    this.queue = next.catch(() => undefined);
    return next;
  }

  async close(): Promise<void> {
    await this.queue;
    if (this.worker) await this.stop(this.worker);
  }

  private async readNow(files: ResolvedFiles, rel: string, user: BuildUser | undefined): Promise<JUnitSummary> {
    if (this.signal?.aborted) throw new JUnitError('not read: the stage was stopped');
    const { file, size: bytes } = await openSelectedFile(files, rel, user ? { user } : {});
    try {
      const { maxFileBytes, maxTotalBytes } = this.limits;
      if (bytes > maxFileBytes) throw new JUnitError(`the report is ${describeBytes(bytes)}, more than the ${describeBytes(maxFileBytes)} a report may be; it is not read`);
      if (this.totalBytes + bytes > maxTotalBytes) {
        throw new JUnitError(`with this report the stage's reports come to ${describeBytes(this.totalBytes + bytes)}, more than the ${describeBytes(maxTotalBytes)} allowed in all; it is not read`);
      }
      this.totalBytes += bytes;
      return await this.parse(file.fd);
    } finally {
      // Only now: the thread has answered or is gone, so it no longer reads this descriptor (nor a reuse of its number).
      await file.close();
    }
  }

  private async parse(fd: number): Promise<JUnitSummary> {
    const worker = (this.worker ??= this.start());
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), this.limits.timeoutMs);
    worker.ref(); // while it parses, the thread keeps the process alive (a script awaiting it would otherwise just exit)
    try {
      const reply = once(worker, 'message', { signal: this.signal ? AbortSignal.any([abort.signal, this.signal]) : abort.signal });
      worker.postMessage({ fd, maxBytes: this.limits.maxFileBytes });
      const [answer] = (await reply) as [Reply];
      if ('error' in answer) throw new JUnitError(answer.error);
      return answer.summary;
    } catch (err) {
      if (err instanceof JUnitError) throw err;
      await this.stop(worker);
      if (this.signal?.aborted) throw new JUnitError('not counted: the stage was stopped while it was parsed');
      throw this.failure(err as NodeJS.ErrnoException, abort.signal.aborted);
    } finally {
      clearTimeout(timer);
      worker.unref();
    }
  }

  private failure(err: NodeJS.ErrnoException, timedOut: boolean): JUnitError {
    if (timedOut) return new JUnitError(`the report took longer than ${this.limits.timeoutMs / 1000} s to parse; it is not counted`);
    if (err.code === 'ERR_WORKER_OUT_OF_MEMORY') return new JUnitError(`the report needs more than ${this.limits.maxHeapMb} MB of memory to parse; it is not counted`);
    return new JUnitError(`the report could not be parsed: ${err.message}`);
  }

  private start(): Worker {
    const worker = new Worker(WORKER, {
      // The worker is plain JavaScript: no tsx (nor anything else the service was started with).
      execArgv: [],
      resourceLimits: { maxOldGenerationSizeMb: this.limits.maxHeapMb },
    });
    // Errors reach the read that is waiting (once() rejects with them); one while idle must not crash the service.
    worker.on('error', () => undefined);
    worker.unref(); // an idle reader left open does not keep the process alive
    return worker;
  }

  private async stop(worker: Worker): Promise<void> {
    if (this.worker === worker) this.worker = undefined;
    await worker.terminate();
  }
}
