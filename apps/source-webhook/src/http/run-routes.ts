import { z } from 'zod';
import { toRunView } from '@conveyor/contracts';
import { ConflictError, InputError, issuesFromZod, NotFoundError, stageLogKey, type App } from '@conveyor/service-kit';
import type { ServerDeps } from './server.js';

const RunParams = z.object({ runId: z.string().regex(/^[a-z0-9][a-z0-9-]{7,80}$/, 'not a run id') });

const CancelBody = z.object({ reason: z.string().trim().min(1).max(500).optional(), mode: z.enum(['abandon', 'wait']).default('abandon') }).strict();

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

  // A stage's artifact (the source snapshot, a build's artifacts.files) as the tar stages exchange. Its
  // digest is in Repr-Digest (RFC 9530); a stored file that no longer matches it ends the body early.
  app.get('/runs/:runId/stages/:stage/artifact', { schema: { params: RunParams.extend({ stage: z.string().max(64) }) } }, async (req, reply) => {
    const run = await load(req.params.runId);
    const stage = run.stages.find((s) => s.name === req.params.stage);
    if (!stage) throw new NotFoundError(`run ${run.id} has no stage ${req.params.stage}`);
    const ref = stage.result?.artifact;
    if (!ref) throw new NotFoundError(`stage ${stage.name} of run ${run.id} stored no artifact${stage.status === 'SUCCEEDED' ? '' : ` (it is ${stage.status})`}`);
    const opened = await deps.artifacts.open(ref);
    if (!opened) throw new NotFoundError(`the artifact of stage ${stage.name} of run ${run.id} is no longer stored (artifact retention keeps those of each pipeline's newest runs)`);
    return reply
      .type('application/x-tar')
      .header('content-length', opened.bytes)
      .header('content-disposition', `attachment; filename="${run.pipeline}-${run.number}-${stage.name}.tar"`)
      .header('repr-digest', `sha-256=:${Buffer.from(ref.sha256, 'hex').toString('base64')}:`)
      .header('etag', `"${ref.sha256}"`)
      .send(opened.stream);
  });

  // Like CodePipeline's StopPipelineExecution: `abandon` ends the run now and stops the work in flight;
  // `wait` lets the running stage finish and ends the run before the next one.
  app.post('/runs/:runId/cancel', { schema: { params: RunParams } }, async (req, reply) => {
    const body = CancelBody.safeParse(req.body ?? {});
    if (!body.success) throw new InputError('invalid cancel request', issuesFromZod(body.error, 'body'));
    const done = await deps.orchestrator.cancelRun(req.params.runId, body.data.reason ?? 'cancelled through the API', body.data.mode);
    if (done.outcome === 'not-found') throw new NotFoundError(`run ${req.params.runId} not found`);
    if (done.outcome === 'ended') throw new ConflictError(`run ${req.params.runId} already ended ${done.run.status}; only a run that has not ended can be cancelled`);
    return reply.code(202).send(toRunView(done.run));
  });
};
