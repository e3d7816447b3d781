import type { PrunableArtifactStore } from '@conveyor/artifacts';
import type { Logger } from '@conveyor/service-kit';
import type { Redis } from 'ioredis';
import { RedisRetentionReader } from './adapters/redis-retention-reader.js';
import { RedisRunHistory } from './adapters/redis-run-history.js';
import type { RedisRunStore } from './adapters/redis-run-store.js';
import { ArtifactPruner } from './artifact-pruner.js';
import { ORPHAN_GRACE_MS } from './domain/artifact-retention.js';
import type { Env } from './env.js';
import { RunHistoryPruner } from './run-history-pruner.js';

/** The first retention pass, after start (unless the interval is shorter): a replica restarted more often than the interval still prunes. */
const FIRST_PASS_MS = 30_000;

export interface Retention {
  start(): void;
  /** Ends the pass under way (between pages and removals) and the timer; resolves once the pass has. */
  stop(): Promise<void>;
}

/**
 * Retention on one timer (ADR 0010): each pass deletes old runs with their artifacts (RUN_HISTORY_DAYS),
 * then the artifacts of runs past each pipeline's newest ARTIFACT_RETENTION_RUNS. Passes never overlap;
 * one that fails is logged, and the next comes as usual.
 */
export function createRetention(
  deps: { redis: Redis; prefix: string; runs: RedisRunStore; artifacts: PrunableArtifactStore; logger: Logger },
  env: Pick<Env, 'ARTIFACT_RETENTION_RUNS' | 'RUN_HISTORY_DAYS' | 'RETENTION_INTERVAL_MS'>,
): Retention {
  const { redis, prefix, runs, artifacts, logger } = deps;
  const reader = new RedisRetentionReader(redis, prefix);
  const artifactPruner = new ArtifactPruner({ store: artifacts, reader, logger, policy: { keepRuns: env.ARTIFACT_RETENTION_RUNS, orphanGraceMs: ORPHAN_GRACE_MS } });
  const historyPruner = new RunHistoryPruner({ runs: new RedisRunHistory(redis, prefix, runs), reader, artifacts, logger, keepDays: env.RUN_HISTORY_DAYS });
  const stopping = new AbortController();
  const pass = async () => {
    const { signal } = stopping;
    if (env.RUN_HISTORY_DAYS > 0) await historyPruner.prune(signal).catch((err) => logger.warn({ err }, 'run history retention failed'));
    if (env.ARTIFACT_RETENTION_RUNS > 0 && !signal.aborted) await artifactPruner.prune(signal).catch((err) => logger.warn({ err }, 'artifact pruning failed'));
  };
  const timer = chainedTimer(pass, env.RETENTION_INTERVAL_MS, Math.min(env.RETENTION_INTERVAL_MS, FIRST_PASS_MS));
  return {
    start: () => {
      if (env.ARTIFACT_RETENTION_RUNS > 0 || env.RUN_HISTORY_DAYS > 0) timer.start();
    },
    stop: () => {
      stopping.abort();
      return timer.stop();
    },
  };
}

/**
 * Runs `pass` `firstMs` after start, then `intervalMs` after each pass ends (passes never overlap). `pass`
 * must not reject. `stop` clears the timer and resolves when the pass under way (if any) has ended.
 */
export function chainedTimer(pass: () => Promise<unknown>, intervalMs: number, firstMs = intervalMs): { start(): void; stop(): Promise<void> } {
  let timer: NodeJS.Timeout | undefined;
  let running: Promise<unknown> = Promise.resolve();
  let stopped = false;
  const schedule = (delay: number) => {
    timer = setTimeout(() => {
      running = pass().finally(() => !stopped && schedule(intervalMs));
    }, delay);
    timer.unref();
  };
  return {
    start: () => schedule(firstMs),
    stop: async () => {
      stopped = true;
      clearTimeout(timer);
      await running.catch(() => undefined);
    },
  };
}
