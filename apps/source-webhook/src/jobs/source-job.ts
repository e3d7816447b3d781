import { artifactKey } from '@conveyor/artifacts';
import { openStageLog, type Redis, type StageHandler } from '@conveyor/service-kit';
import type { SourceRepository } from '../ports.js';

/** The Source stage: resolve the commit and store the repository snapshot as the source artifact. */
export const sourceJobHandler =
  (deps: { repository: SourceRepository; redis: Redis; prefix: string }): StageHandler<'source'> =>
  async (job) => {
    const log = openStageLog(deps.redis, deps.prefix, job.jobId);
    try {
      const { commit, artifact } = await deps.repository.snapshot({
        repository: job.repository,
        ref: job.trigger.ref,
        ...(job.trigger.commit ? { commit: job.trigger.commit, commitOnRef: job.trigger.type === 'manual' } : {}),
        artifactKey: artifactKey(job.runId, job.stage, job.attempt),
        log: (line) => log.write(line),
      });
      return { status: 'SUCCEEDED', output: { commit, artifact } };
    } catch (err) {
      log.write(`[source] ${(err as Error).message}\n`);
      throw err;
    } finally {
      await log.close();
    }
  };
