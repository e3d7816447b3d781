import { z } from 'zod';
import { toRunView } from '@conveyor/contracts';
import { NotFoundError, stageLogKey, type App } from '@conveyor/service-kit';
import type { ServerDeps } from './server.js';

const RunParams = z.object({ runId: z.string().regex(/^[a-z0-9][a-z0-9-]{7,80}$/, 'not a run id') });

export const runRoutes = (deps: ServerDeps) => async (app: App) => {
  const load = async (runId: string) => {
    const run = await deps.runs.get(runId);
    if (!run) throw new NotFoundError(`run ${runId} not found`);
    return run;
  };

  app.get('/runs/:runId', { schema: { params: RunParams } }, async (req) => toRunView(await load(req.params.runId)));

  app.get('/runs/:runId/stages/:stage/logs', { schema: { params: RunParams.extend({ stage: z.string().max(64) }) } }, async (req, reply) => {
    const run = await load(req.params.runId);
    const stage = run.stages.find((s) => s.name === req.params.stage);
    if (!stage) throw new NotFoundError(`run ${run.id} has no stage ${req.params.stage}`);
    const text = stage.jobId ? await deps.redis.get(stageLogKey(deps.prefix, stage.jobId)) : null;
    return reply.type('text/plain; charset=utf-8').send(text ?? '');
  });
};
