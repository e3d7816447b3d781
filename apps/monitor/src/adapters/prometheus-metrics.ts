import type { Queue } from 'bullmq';
import { Counter, Gauge, Histogram, type Registry } from 'prom-client';
import type { Logger } from '@conveyor/service-kit';
import type { RunMetrics } from '../ports.js';

/** Stage durations run from seconds (a quick deploy) to hours (a long build). */
const STAGE_BUCKETS = [1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200];

export class PrometheusRunMetrics implements RunMetrics {
  private readonly runs: Counter<'pipeline' | 'status'>;
  private readonly stages: Histogram<'pipeline' | 'stage' | 'type' | 'status'>;

  constructor(registry: Registry) {
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
  }

  runFinished(pipeline: string, status: string): void {
    this.runs.inc({ pipeline, status });
  }

  stageFinished(labels: { pipeline: string; stage: string; type: string; status: string }, seconds: number): void {
    this.stages.observe(labels, seconds);
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
