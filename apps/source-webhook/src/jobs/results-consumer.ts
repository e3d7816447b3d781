import { QUEUES, runIdOfJob } from '@conveyor/contracts';
import { explainFailedStageJob, keepStageEvents, stageEventsKey, StreamGroupConsumer, type Logger, type Redis, type StreamEntry } from '@conveyor/service-kit';
import { completionInput } from '../domain/outcome.js';
import type { Orchestrator, RunInputFor } from '../orchestrator.js';
import { safeJson } from '../domain/json.js';

export const RESULTS_GROUP = 'orchestrator';

export interface ResultsConsumerOptions {
  /** A dedicated connection: XREADGROUP BLOCK holds it. */
  redis: Redis;
  prefix: string;
  orchestrator: Pick<Orchestrator, 'handleInputs'>;
  logger: Logger;
  /** Stage queues whose jobs' outcomes are read. Default: all of them. */
  queues?: readonly string[];
  batch?: number;
  blockMs?: number;
  /** Entries a dead reader left unacknowledged this long are claimed by a live one. */
  claimIdleMs?: number;
  /** Batches applied at once. */
  maxInFlight?: number;
  /** Readers with nothing pending and idle this long are dropped from the group (default 1 hour). */
  forgetConsumersIdleMs?: number;
}

/**
 * A stage job's outcome is its BullMQ return value (a StageResult), which BullMQ writes in the same
 * script that completes the job and appends to the queue's event stream (ADR 0006). This reads those
 * streams with the consumer group `orchestrator` (service-kit's StreamGroupConsumer: take-over of
 * what a dead reader left, dead-letter on `<prefix>:results-dead` after 10 failed applies): a
 * `completed` event carries the StageResult, a `failed` event (the job failed for good: malformed,
 * stalled out) becomes a lost stage. Other events are acknowledged and skipped.
 */
export class ResultsConsumer {
  private readonly reader: StreamGroupConsumer;

  constructor(private readonly opts: ResultsConsumerOptions) {
    const queues = opts.queues ?? Object.values(QUEUES);
    this.reader = new StreamGroupConsumer({
      redis: opts.redis,
      streams: queues.map((q) => stageEventsKey(opts.prefix, q)),
      group: RESULTS_GROUP,
      name: 'stage event streams',
      deadLetterStream: `${opts.prefix}:results-dead`,
      logger: opts.logger,
      handle: (entries) => this.apply(entries),
      // BullMQ resets a queue's event trim length whenever a Queue is made without it: re-assert ours.
      maintain: async (redis) => void (await Promise.all(queues.map((q) => keepStageEvents(redis, opts.prefix, q)))),
      batch: opts.batch,
      blockMs: opts.blockMs,
      claimIdleMs: opts.claimIdleMs,
      maxInFlight: opts.maxInFlight,
      forgetConsumersIdleMs: opts.forgetConsumersIdleMs,
    });
  }

  isRunning(): boolean {
    return this.reader.isRunning();
  }

  start(): Promise<void> {
    return this.reader.start();
  }

  stop(): Promise<void> {
    return this.reader.stop();
  }

  /** The entries' run inputs go to the orchestrator; the entries of inputs it could not apply are returned. */
  private async apply(entries: StreamEntry[]): Promise<StreamEntry[]> {
    const inputs = new Map<RunInputFor, StreamEntry>();
    for (const entry of entries) {
      const item = this.decode(entry.fields);
      if (item) inputs.set(item, entry);
    }
    if (inputs.size === 0) return [];
    const failed = await this.opts.orchestrator.handleInputs([...inputs.keys()]);
    return failed.map((item) => inputs.get(item)!);
  }

  /** A stream entry → the run input it carries, if any. */
  private decode(fields: string[]): RunInputFor | undefined {
    const field = (name: string) => {
      for (let i = 0; i + 1 < fields.length; i += 2) if (fields[i] === name) return fields[i + 1];
      return undefined;
    };
    const event = field('event');
    if (event !== 'completed' && event !== 'failed') return undefined;
    const jobId = field('jobId') ?? '';
    const runId = runIdOfJob(jobId);
    if (!runId) return undefined; // not a stage job of ours
    if (event === 'failed') return { runId, input: { type: 'stage-lost', jobId, reason: explainFailedStageJob(field('failedReason') || 'the stage job failed') } };
    const { input, problem } = completionInput(jobId, safeJson(field('returnvalue')));
    if (problem) this.opts.logger.error({ jobId, problem }, 'stage job completed without a valid result');
    return { runId, input };
  }
}
