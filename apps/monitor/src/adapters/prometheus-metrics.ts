import type { Queue } from 'bullmq';
import { Counter, Gauge, Histogram, type Registry } from 'prom-client';
import type { Logger } from '@conveyor/service-kit';
import type { RunMetrics } from '../ports.js';

/** Stage durations run from seconds (a quick deploy) to hours (a long build). */
const STAGE_BUCKETS = [1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200];

/** The label value that stands for every pipeline or stage beyond the series limit. */
export const OTHER = '_other';

/**
 * Run and stage metrics from run events. Pipeline and stage names are users' words, and pipelines come
 * and go while a monitor lives for months: at most `maxSeries` distinct (pipeline, stage) pairs get
 * series of their own; later ones are counted under `_other` (and counted in
 * `conveyor_metric_series_folded_total`), so a scrape never grows without bound.
 */
export class PrometheusRunMetrics implements RunMetrics {
  private readonly runs: Counter<'pipeline' | 'status'>;
  private readonly stages: Histogram<'pipeline' | 'stage' | 'type' | 'status'>;
  private readonly folded: Counter;
  private readonly pipelines = new Set<string>();
  private readonly pairs = new Set<string>();

  constructor(
    registry: Registry,
    private readonly maxSeries = 2000,
  ) {
    this.runs = new Counter({
      name: 'conveyor_runs_total',
      help: 'Finished pipeline runs, by pipeline and final status (since this monitor started)',
      labelNames: ['pipeline', 'status'],
      registers: [registry],
    });
    this.stages = new Histogram({
      name: 'conveyor_stage_duration_seconds',
      help: 'Duration of finished stages',
      labelNames: ['pipeline', 'stage', 'type', 'status'],
      buckets: STAGE_BUCKETS,
      registers: [registry],
    });
    this.folded = new Counter({
      name: 'conveyor_metric_series_folded_total',
      help: 'Observations counted under pipeline/stage "_other" because the series limit was reached',
      registers: [registry],
    });
  }

  runFinished(pipeline: string, status: string): void {
    this.runs.inc({ pipeline: this.admit(this.pipelines, pipeline) ? pipeline : OTHER, status });
  }

  stageFinished(labels: { pipeline: string; stage: string; type: string; status: string }, seconds: number): void {
    const own = this.admit(this.pairs, `${labels.pipeline}\u0000${labels.stage}`);
    this.stages.observe(own ? labels : { ...labels, pipeline: OTHER, stage: OTHER }, seconds);
  }

  /** Whether `key` has (or may now have) series of its own. */
  private admit(seen: Set<string>, key: string): boolean {
    if (seen.has(key)) return true;
    if (seen.size >= this.maxSeries) {
      this.folded.inc();
      return false;
    }
    seen.add(key);
    return true;
  }
}

export const QUEUE_STATES = ['waiting', 'active', 'delayed', 'failed'] as const;

/**
 * `conveyor_queue_depth{queue,state}`, read from BullMQ at scrape time. `waiting` includes prioritized
 * jobs (BullMQ keeps them apart; both are ready to run). A Redis failure leaves the gauge empty.
 */
export function registerQueueDepth(registry: Registry, queues: readonly Queue[], logger: Logger, timeoutMs = 2000): Gauge<'queue' | 'state'> {
  return new Gauge({
    name: 'conveyor_queue_depth',
    help: 'Jobs per queue and state, read from BullMQ when scraped',
    labelNames: ['queue', 'state'],
    registers: [registry],
    async collect() {
      this.reset();
      try {
        const all = await Promise.race([
          Promise.all(queues.map(async (q) => ({ name: q.name, counts: await q.getJobCounts(...QUEUE_STATES, 'prioritized') }))),
          new Promise<never>((_, reject) => setTimeout(() => reject(new Error('queue counts timed out')), timeoutMs).unref()),
        ]);
        for (const { name, counts } of all) {
          for (const state of QUEUE_STATES) {
            const extra = state === 'waiting' ? (counts.prioritized ?? 0) : 0;
            this.set({ queue: name, state }, (counts[state] ?? 0) + extra);
          }
        }
      } catch (err) {
        logger.warn({ err }, 'could not read queue depths');
      }
    },
  });
}
