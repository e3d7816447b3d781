import { Registry } from 'prom-client';
import { describe, expect, it } from 'vitest';
import { OTHER, PrometheusRunMetrics } from './prometheus-metrics.js';

async function values(registry: Registry, name: string) {
  const metric = (await registry.getMetricsAsJSON()).find((m) => m.name === name);
  return (metric?.values ?? []) as { labels: Record<string, string | number>; value: number; metricName?: string }[];
}

describe('PrometheusRunMetrics', () => {
  it('gives each pipeline and stage series of its own up to the limit, then counts the rest as _other', async () => {
    const registry = new Registry();
    const metrics = new PrometheusRunMetrics(registry, 2);
    for (const pipeline of ['shop', 'blog', 'wiki', 'docs', 'shop']) metrics.runFinished(pipeline, 'SUCCEEDED');
    const runs = await values(registry, 'conveyor_runs_total');
    expect(Object.fromEntries(runs.map((v) => [v.labels.pipeline, v.value]))).toEqual({ shop: 2, blog: 1, [OTHER]: 2 });

    metrics.stageFinished({ pipeline: 'shop', stage: 'Build', type: 'build', status: 'SUCCEEDED' }, 3);
    metrics.stageFinished({ pipeline: 'shop', stage: 'Test', type: 'test', status: 'SUCCEEDED' }, 4);
    metrics.stageFinished({ pipeline: 'shop', stage: 'Deploy', type: 'deploy', status: 'FAILED' }, 5);
    metrics.stageFinished({ pipeline: 'shop', stage: 'Build', type: 'build', status: 'SUCCEEDED' }, 6);
    const counts = (await values(registry, 'conveyor_stage_duration_seconds')).filter((v) => v.metricName === 'conveyor_stage_duration_seconds_count');
    expect(counts.map((v) => [v.labels.pipeline, v.labels.stage, v.labels.type, v.value])).toEqual([
      ['shop', 'Build', 'build', 2],
      ['shop', 'Test', 'test', 1],
      [OTHER, OTHER, 'deploy', 1],
    ]);
    expect((await values(registry, 'conveyor_metric_series_folded_total'))[0]?.value).toBe(3);
  });
});
