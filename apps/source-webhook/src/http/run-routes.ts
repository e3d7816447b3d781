import { z } from 'zod';
import { toRunView } from '@conveyor/contracts';
import { artifactKey } from '@conveyor/artifacts';
import { ConflictError, InputError, issuesFromZod, NotFoundError, sendProblem, stageLogKey, type App } from '@conveyor/service-kit';
import type { ServerDeps } from './server.js';

const RunParams = z.object({ runId: z.string().regex(/^[a-z0-9][a-z0-9-]{7,80}$/, 'not a run id') });

const DOWNLOAD_IDLE_MS = 60_000;

const CancelBody = z.object({ reason: z.string().trim().min(1).max(500).optional(), mode: z.enum(['abandon', 'wait']).default('abandon') }).strict();

export const runRoutes = (deps: ServerDeps) => async (app: App) => {
  /** Artifacts open for download now (ARTIFACT_DOWNLOADS_MAX at once: each holds a file and a socket, and a small one is read whole to check it). */
  let downloads = 0;
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

  // A stage's artifact (the source snapshot, a build's or test's artifacts.files) as the tar stages
  // exchange; a failed build's, if it stored one, too (as CodeBuild keeps it). Its digest is in ETag and
  // Repr-Digest (RFC 9530). A stored file that does not match it is a 500 before any byte (wrong size,
  // or up to 1 MiB) or, past that, a body cut before its last bytes.
  app.get('/runs/:runId/stages/:stage/artifact', { schema: { params: RunParams.extend({ stage: z.string().max(64) }) } }, async (req, reply) => {
    const run = await load(req.params.runId);
    const stage = run.stages.find((s) => s.name === req.params.stage);
    if (!stage) throw new NotFoundError(`run ${run.id} has no stage ${req.params.stage}`);
    const ref = stage.result?.artifact;
    // Only the stage's own key: a record naming another run's artifact gives nothing.
    if (!ref || ref.key !== artifactKey(run.id, stage.name, stage.attempt)) {
      throw new NotFoundError(`stage ${stage.name} of run ${run.id} stored no artifact${stage.status === 'SUCCEEDED' ? '' : ` (it is ${stage.status})`}`);
    }
    const etag = `"${ref.sha256}"`;
    const headers = { etag, 'cache-control': 'private, no-cache' };
    // Weak comparison (RFC 9110): `W/"<sha256>"` matches too. `*` matches only an artifact still stored (below).
    const tags = String(req.headers['if-none-match'] ?? '').split(',').map((t) => t.trim().replace(/^W\//, ''));
    if (tags.includes(etag)) return reply.code(304).headers(headers).send();
    if (downloads >= deps.artifactDownloadsMax) {
      reply.header('retry-after', '5');
      return sendProblem(reply, 503, 'Service Unavailable', `${downloads} artifacts are being downloaded from this service now, its most at once (ARTIFACT_DOWNLOADS_MAX); try again shortly`);
    }
    downloads++;
    let held = true;
    const release = () => {
      if (held) downloads--;
      held = false;
    };
    let opened: Awaited<ReturnType<typeof deps.artifacts.open>>;
    try {
      opened = await deps.artifacts.open(ref);
    } catch (err) {
      release();
      throw err;
    }
    // Counted until its file is closed (read to its end, or dropped with its client) or its response ends; a HEAD's at once.
    if (!opened || req.method === 'HEAD') release();
    else {
      reply.raw.once('close', release);
      opened.stream.once('close', release);
    }
    if (!opened) throw new NotFoundError(`the artifact of stage ${stage.name} of run ${run.id} is no longer stored (removed by artifact retention, or this service reads another ARTIFACT_DIR than the stages write)`);
    if (tags.includes('*')) {
      opened.stream.destroy();
      return reply.code(304).headers(headers).send();
    }
    reply
      .type('application/x-tar')
      .headers(headers)
      .header('content-length', opened.bytes)
      .header('content-disposition', `attachment; filename="${run.pipeline}-${run.number}-${stage.name}.tar"`)
      .header('repr-digest', `sha-256=:${Buffer.from(ref.sha256, 'hex').toString('base64')}:`)
      .header('x-content-type-options', 'nosniff')
      .header('accept-ranges', 'none');
    if (req.method === 'HEAD') {
      // Answered here: fastify's HEAD would read the whole stream to throw it away, and say length 0 without one.
      opened.stream.destroy();
      reply.hijack();
      reply.raw.writeHead(200, reply.getHeaders() as Record<string, string>);
      reply.raw.end();
      return reply;
    }
    // A client that stops reading is cut off after a minute without a completed write (the file stays open meanwhile).
    req.raw.socket?.setTimeout?.(DOWNLOAD_IDLE_MS);
    return reply.send(opened.stream);
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
