import { startRedisServer } from '@conveyor/testing';
import { orchestrated, rawChain, type HopBenchResult } from './orchestrator-bench.js';
import { pipelineVsBash } from './pipeline-bench.js';

// A benchmark prints for a person: stdout is its interface.
const print = (line: string) => process.stdout.write(`${line}\n`);
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const fmt = (r: HopBenchResult) => `${r.hopsPerSecond.toFixed(0)} hops/s (${r.runs} runs × 5 stages in ${r.seconds.toFixed(2)} s)`;

const RUNS = Number(process.env.BENCH_RUNS ?? 300);
const CONCURRENCY = Number(process.env.BENCH_CONCURRENCY ?? 16);
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3);

async function main() {
  const redis = await startRedisServer();
  try {
    print(`(a) stage transitions per second, ${RUNS} runs, worker concurrency ${CONCURRENCY}, ${ROUNDS} rounds, private redis-server`);
    await rawChain(redis.url, 50, CONCURRENCY);
    await orchestrated(redis.url, 50, CONCURRENCY);
    const raw: number[] = [];
    const conveyor: number[] = [];
    for (let i = 0; i < ROUNDS; i++) {
      const r = await rawChain(redis.url, RUNS, CONCURRENCY);
      const c = await orchestrated(redis.url, RUNS, CONCURRENCY);
      raw.push(r.hopsPerSecond);
      conveyor.push(c.hopsPerSecond);
      print(`  round ${i + 1}: raw BullMQ chain ${fmt(r)} | Conveyor orchestrator ${fmt(c)}`);
    }
    const ratio = median(conveyor) / median(raw);
    print(`  median: raw ${median(raw).toFixed(0)} hops/s, Conveyor ${median(conveyor).toFixed(0)} transitions/s`);
    print(`  RATIO (a) Conveyor ÷ raw BullMQ = ${ratio.toFixed(2)} (target ≥ 0.5) ${ratio >= 0.5 ? 'MET' : 'NOT MET'}`);

    print('');
    print('(b) wall time of a 5-stage pipeline whose commands are `true`, vs bash running the same steps');
    const b = await pipelineVsBash(redis.url, ROUNDS);
    for (const line of b.lines) print(`  ${line}`);
    print(`  RATIO (b) Conveyor ÷ bash = ${b.ratio.toFixed(1)} (median ${b.conveyorMs.toFixed(0)} ms vs ${b.bashMs.toFixed(1)} ms)`);
  } finally {
    await redis.stop();
  }
}

main().then(
  () => process.exit(0),
  (err) => {
    print(`bench failed: ${err instanceof Error ? err.stack : String(err)}`);
    process.exit(1);
  },
);
