import type { Queue } from 'bullmq';
import { Counter, Gauge, Histogram, type Registry } from 'prom-client';
import type { Logger } from '@conveyor/service-kit';
import type { RunMetrics } from '../ports.js';

/** Stage durations run from seconds (a quick deploy) to hours (a long build). */
const STAGE_BUCKETS = [1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200];

type Labels = Record<string, string>;

/**
 * The label sets of the keys (pipelines, or pipeline/stage pairs) that have series, least recently used
 * first. Beyond `max` keys the least recently used one's series are removed: a pipeline deleted or a
 * stage renamed stops costing scrape space, and a new one always gets series of its own.
 */
class SeriesBudget {
  private readonly used = new Map<string, Map<string, Labels>>();
  constructor(
    private readonly max: number,
    private readonly drop: (labels: Labels) => void,
    private readonly evicted: Counter,
  ) {}

  touch(key: string, labels: Labels): void {
    const seen = this.used.get(key) ?? new Map<string, Labels>();
    this.used.delete(key);
    seen.set(JSON.stringify(labels), labels);
    this.used.set(key, seen);
    while (this.used.size > this.max) {
      const [oldest, sets] = this.used.entries().next().value!;
      this.used.delete(oldest);
      for (const set of sets.values()) this.drop(set);
      this.evicted.inc();
    }
  }
}

/**
 * Run and stage metrics from run events. Pipeline and stage names are users' words, and pipelines come
 * and go while a monitor lives for months: at most `maxKeys` pipelines, and as many (pipeline, stage)
 * pairs, have series; the least recently updated beyond that are removed (counted in
 * `conveyor_metric_series_evicted_total`), so a scrape never grows without bound.
 */
export class PrometheusRunMetrics implements RunMetrics {
  private readonly runs: Counter<'pipeline' | 'status'>;
  private readonly stages: Histogram<'pipeline' | 'stage' | 'type' | 'status'>;
  private readonly runKeys: SeriesBudget;
  private readonly stageKeys: SeriesBudget;

  constructor(registry: Registry, maxKeys = 2000) {
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
    const evicted = new Counter({
      name: 'conveyor_metric_series_evicted_total',
      help: 'Pipelines and pipeline/stage pairs whose series were removed, least recently updated first, to keep the scrape bounded',
      registers: [registry],
    });
    this.runKeys = new SeriesBudget(maxKeys, (labels) => this.runs.remove(labels), evicted);
    this.stageKeys = new SeriesBudget(maxKeys, (labels) => this.stages.remove(labels), evicted);
  }

  runFinished(pipeline: string, status: string): void {
    this.runs.inc({ pipeline, status });
    this.runKeys.touch(pipeline, { pipeline, status });
  }

  stageFinished(labels: { pipeline: string; stage: string; type: string; status: string }, seconds: number): void {
    this.stages.observe(labels, seconds);
    this.stageKeys.touch(`${labels.pipeline}\u0000${labels.stage}`, labels);
  }
}

/**
 * `conveyor_events_lost_total`, told by the event reader: run events trimmed from the stream before the
 * monitor read them (it was down, or behind, while more was written than the stream keeps), which its
 * metrics and history miss. A loss Redis cannot size counts as one, so that every loss shows.
 */
export function registerEventsLost(registry: Registry): (lost: { count: number | undefined }) => void {
  const counter = new Counter({
    name: 'conveyor_events_lost_total',
    help: 'Run events trimmed from the stream before the monitor read them (missing from metrics and history)',
    registers: [registry],
  });
  return ({ count }) => counter.inc(count ?? 1);
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
