import type { FastifyReply, FastifyRequest } from 'fastify';
import { z } from 'zod';
import { PipelineName } from '@conveyor/contracts';
import { sendProblem, type App } from '@conveyor/service-kit';
import type { ServerDeps } from './server.js';

const header = (v: string | string[] | undefined) => (Array.isArray(v) ? v[0] : v);

/** Webhook bodies held in memory at once, in bodies of the largest size taken (WEBHOOK_BODY_LIMIT). */
export const WEBHOOK_BODIES_IN_FLIGHT = 4;

export const webhookRoutes = (deps: ServerDeps) => async (app: App) => {
  // The signature covers the exact bytes sent: keep the raw body, parse JSON only after verifying.
  app.removeAllContentTypeParsers();
  // GitHub sends either content type (its default is the form, the JSON in a `payload` field).
  const raw = { parseAs: 'buffer' as const, bodyLimit: deps.webhookBodyLimit };
  app.addContentTypeParser('application/json', raw, (_req, body, done) => done(null, body));
  app.addContentTypeParser('application/x-www-form-urlencoded', raw, (_req, body, done) => done(null, body));

  // A body is read whole before its signature can be checked: a sender who cannot sign could otherwise
  // make this process hold any number of them at once. Each request reserves what it says it sends
  // (its Content-Length, or the limit when it does not say) until its response is done; past the
  // budget it is answered 503 with Retry-After before its body is read. GitHub's pushes are kilobytes.
  const budget = WEBHOOK_BODIES_IN_FLIGHT * deps.webhookBodyLimit;
  let reserved = 0;
  app.addHook('onRequest', async (req, reply) => {
    const declared = Number(header(req.headers['content-length']));
    const size = Number.isSafeInteger(declared) && declared >= 0 ? Math.min(declared, deps.webhookBodyLimit) : deps.webhookBodyLimit;
    if (reserved + size > budget) {
      reply.header('retry-after', '5');
      return sendProblem(reply, 503, 'Service Unavailable', `too many webhook bodies are being received at once (at most ${budget} bytes); send it again later`);
    }
    reserved += size;
    reply.raw.once('close', () => (reserved -= size));
  });

  const github = async (req: FastifyRequest, reply: FastifyReply, pipeline?: string) => {
    const rawBody = Buffer.isBuffer(req.body) ? req.body : Buffer.alloc(0);
    const result = await deps.intake.github({
      rawBody,
      form: (header(req.headers['content-type']) ?? '').toLowerCase().startsWith('application/x-www-form-urlencoded'),
      event: header(req.headers['x-github-event']),
      deliveryId: header(req.headers['x-github-delivery']),
      signature: header(req.headers['x-hub-signature-256']),
      ...(pipeline ? { pipeline } : {}),
    });
    return reply.code(result.status).send(result.body);
  };
  // One endpoint for every pipeline (matched by repository), or one per pipeline (one HMAC to check).
  app.post('/github', (req, reply) => github(req, reply));
  app.post('/github/:pipeline', { schema: { params: z.object({ pipeline: PipelineName }) } }, (req, reply) => github(req, reply, req.params.pipeline));
};
