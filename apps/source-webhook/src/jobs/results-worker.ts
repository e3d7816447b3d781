import { Worker, type ConnectionOptions } from 'bullmq';
import { QUEUES, StageResult } from '@conveyor/contracts';
import type { Logger, Redis } from '@conveyor/service-kit';
import type { Orchestrator } from '../orchestrator.js';

/** Consumes StageResults and feeds them to the orchestrator. A malformed result is dropped, loudly. */
export function createResultsWorker(deps: { connection: Redis; prefix: string; orchestrator: Orchestrator; logger: Logger; concurrency: number }): Worker {
  const worker = new Worker(
    QUEUES.results,
    async (job) => {
      const parsed = StageResult.safeParse(job.data);
      if (!parsed.success) {
        deps.logger.error({ jobId: job.id, issues: parsed.error.issues }, 'malformed stage result dropped');
        return;
      }
      await deps.orchestrator.handleResult(parsed.data);
    },
    { connection: deps.connection as unknown as ConnectionOptions, prefix: deps.prefix, concurrency: deps.concurrency },
  );
  worker.on('error', (err) => deps.logger.error({ err }, 'results worker error'));
  return worker;
}
