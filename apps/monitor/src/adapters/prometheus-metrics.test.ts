import { Registry } from 'prom-client';
import { describe, expect, it } from 'vitest';
import { PrometheusRunMetrics, registerEventsLost } from './prometheus-metrics.js';

async function values(registry: Registry, name: string) {
  const metric = (await registry.getMetricsAsJSON()).find((m) => m.name === name);
  return (metric?.values ?? []) as { labels: Record<string, string | number>; value: number; metricName?: string }[];
}

describe('PrometheusRunMetrics', () => {
  it('keeps series for the most recently updated pipelines only, removing the least recently updated', async () => {
    const registry = new Registry();
    const metrics = new PrometheusRunMetrics(registry, 2);
    metrics.runFinished('shop', 'SUCCEEDED');
    metrics.runFinished('shop', 'FAILED');
    metrics.runFinished('blog', 'SUCCEEDED');
    metrics.runFinished('shop', 'SUCCEEDED'); // shop is now the most recent
    metrics.runFinished('wiki', 'SUCCEEDED'); // blog, the least recent, goes
    const runs = await values(registry, 'conveyor_runs_total');
    expect(runs.map((v) => [v.labels.pipeline, v.labels.status, v.value])).toEqual([
      ['shop', 'SUCCEEDED', 2],
      ['shop', 'FAILED', 1],
      ['wiki', 'SUCCEEDED', 1],
    ]);
    expect((await values(registry, 'conveyor_metric_series_evicted_total'))[0]?.value).toBe(1);
  });

  it('removes every series of an evicted pipeline/stage pair, whatever their status', async () => {
    const registry = new Registry();
    const metrics = new PrometheusRunMetrics(registry, 2);
    metrics.stageFinished({ pipeline: 'shop', stage: 'Build', type: 'build', status: 'SUCCEEDED' }, 3);
    metrics.stageFinished({ pipeline: 'shop', stage: 'Build', type: 'build', status: 'FAILED' }, 4);
    metrics.stageFinished({ pipeline: 'shop', stage: 'Test', type: 'test', status: 'SUCCEEDED' }, 5);
    metrics.stageFinished({ pipeline: 'shop', stage: 'Deploy', type: 'deploy', status: 'SUCCEEDED' }, 6);
    const counts = (await values(registry, 'conveyor_stage_duration_seconds')).filter((v) => v.metricName === 'conveyor_stage_duration_seconds_count');
    expect(counts.map((v) => [v.labels.stage, v.labels.status, v.value])).toEqual([
      ['Test', 'SUCCEEDED', 1],
      ['Deploy', 'SUCCEEDED', 1],
    ]);
  });
});

describe('registerEventsLost', () => {
  it('counts the events lost, an unsized loss as one, from zero', async () => {
    const registry = new Registry();
    const lost = registerEventsLost(registry);
    expect((await values(registry, 'conveyor_events_lost_total'))[0]?.value).toBe(0);
    lost({ count: 895 });
    lost({ count: undefined });
    expect((await values(registry, 'conveyor_events_lost_total'))[0]?.value).toBe(896);
  });
});
