import { startRedisServer } from '@conveyor/testing';
import { orchestrated, rawChain, rawChainLikeForLike, rawCoordinated, statelessReader, type HopBenchResult } from './orchestrator-bench.js';
import { pipelineVsBash } from './pipeline-bench.js';

// A benchmark prints for a person: stdout is its interface.
const print = (line: string) => process.stdout.write(`${line}\n`);
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const fmt = (r: HopBenchResult) => `${r.hopsPerSecond.toFixed(0)} transitions/s (${r.runs} runs × 5 stages in ${r.seconds.toFixed(2)} s)`;

const RUNS = Number(process.env.BENCH_RUNS ?? 1000);
const CONCURRENCIES = (process.env.BENCH_CONCURRENCY ?? '4,16,64').split(',').map(Number);
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3);
/** Also measure the floor of the design (Conveyor's stage workers and a stateless event reader) and the raw chain with Conveyor's payloads and job options. */
const FLOOR = process.env.BENCH_FLOOR === '1';

async function main() {
  const redis = await startRedisServer();
  try {
    print(`(a) stage transitions per second: ${RUNS} runs × 5 stages with no-op stage workers, ${ROUNDS} rounds per setting,`);
    print('    everything in this one process against a private redis-server. Baselines: a raw BullMQ chain (each worker adds');
    print('    the next stage: 5 queue hops a run) and raw BullMQ with a coordinator queue (job out, result back, next job: 10 hops)');
    // Warm-up at full size, discarded: JIT-compiled code on both sides, as in a long-running service.
    for (let i = 0; i < 2; i++) {
      await rawChain(redis.url, RUNS, 16);
      await rawCoordinated(redis.url, RUNS, 16);
      if (FLOOR) await statelessReader(redis.url, RUNS, 16);
      if (FLOOR) await rawChainLikeForLike(redis.url, RUNS, 16);
      await orchestrated(redis.url, RUNS, 16);
    }
    for (const concurrency of CONCURRENCIES) {
      const raw: number[] = [];
      const coord: number[] = [];
      const conveyor: number[] = [];
      const floor: number[] = [];
      const likeForLike: number[] = [];
      // CPU microseconds per transition: steadier than rates on a shared machine (the process is CPU-bound).
      const cpuRaw: number[] = [];
      const cpuConveyor: number[] = [];
      // redis-server's CPU per transition: on two cores the two processes share, what limits both sides is their sum.
      const redisRaw: number[] = [];
      const redisConveyor: number[] = [];
      // Cores each side kept busy (CPU seconds per second): which of the two processes limits it.
      const coresRaw: [number, number][] = [];
      const coresConveyor: [number, number][] = [];
      for (let i = 0; i < ROUNDS; i++) {
        const r = await rawChain(redis.url, RUNS, concurrency);
        const k = await rawCoordinated(redis.url, RUNS, concurrency);
        const f = FLOOR ? await statelessReader(redis.url, RUNS, concurrency) : undefined;
        const l = FLOOR ? await rawChainLikeForLike(redis.url, RUNS, concurrency) : undefined;
        const c = await orchestrated(redis.url, RUNS, concurrency);
        raw.push(r.hopsPerSecond);
        coord.push(k.hopsPerSecond);
        if (f) floor.push(f.hopsPerSecond);
        if (l) likeForLike.push(l.hopsPerSecond);
        conveyor.push(c.hopsPerSecond);
        cpuRaw.push((r.cpu / r.hops) * 1e6);
        cpuConveyor.push((c.cpu / c.hops) * 1e6);
        redisRaw.push((r.redisCpu / r.hops) * 1e6);
        redisConveyor.push((c.redisCpu / c.hops) * 1e6);
        coresRaw.push([r.cpu / r.seconds, r.redisCpu / r.seconds]);
        coresConveyor.push([c.cpu / c.seconds, c.redisCpu / c.seconds]);
        const floorText = f && l ? ` | stateless reader ${f.hopsPerSecond.toFixed(0)}/s | raw chain, Conveyor's payloads ${l.hopsPerSecond.toFixed(0)}/s` : '';
        print(`  concurrency ${concurrency}, round ${i + 1}: raw chain ${r.hopsPerSecond.toFixed(0)}/s | raw + coordinator ${k.hopsPerSecond.toFixed(0)}/s${floorText} | Conveyor ${fmt(c)}`);
      }
      const strict = median(conveyor) / median(raw);
      const like = median(conveyor) / median(coord);
      const floorText = FLOOR
        ? `; stateless reader ÷ raw chain = ${(median(floor) / median(raw)).toFixed(2)}; Conveyor ÷ raw chain with Conveyor's payloads and job options = ${(median(conveyor) / median(likeForLike)).toFixed(2)}`
        : '';
      print(`  RATIO (a) at worker concurrency ${concurrency}: Conveyor ÷ raw chain = ${strict.toFixed(2)} (target ≥ 0.5: ${strict >= 0.5 ? 'met' : 'NOT met'}); Conveyor ÷ raw + coordinator = ${like.toFixed(2)}${floorText}`);
      print(`    CPU of this process per transition: Conveyor ${median(cpuConveyor).toFixed(0)} µs, raw chain ${median(cpuRaw).toFixed(0)} µs (${(median(cpuConveyor) / median(cpuRaw)).toFixed(2)}×)`);
      const totalConveyor = median(cpuConveyor) + median(redisConveyor);
      const totalRaw = median(cpuRaw) + median(redisRaw);
      print(
        `    + redis-server's: Conveyor ${median(redisConveyor).toFixed(0)} µs, raw chain ${median(redisRaw).toFixed(0)} µs; together ${totalConveyor.toFixed(0)} vs ${totalRaw.toFixed(0)} µs, so by CPU the ratio would be ${(totalRaw / totalConveyor).toFixed(2)}`,
      );
      const cores = (xs: [number, number][]) => `this process ${median(xs.map((x) => x[0])).toFixed(2)}, redis-server ${median(xs.map((x) => x[1])).toFixed(2)}`;
      print(`    cores kept busy: Conveyor: ${cores(coresConveyor)}; raw chain: ${cores(coresRaw)}`);
    }
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
