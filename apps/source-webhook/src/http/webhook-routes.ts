import type { FastifyReply, FastifyRequest } from 'fastify';
import { z } from 'zod';
import { PipelineName } from '@conveyor/contracts';
import type { App } from '@conveyor/service-kit';
import type { ServerDeps } from './server.js';

const header = (v: string | string[] | undefined) => (Array.isArray(v) ? v[0] : v);

export const webhookRoutes = (deps: ServerDeps) => async (app: App) => {
  // The signature covers the exact bytes sent: keep the raw body, parse JSON only after verifying.
  app.removeAllContentTypeParsers();
  // GitHub sends either content type (its default is the form, the JSON in a `payload` field).
  const raw = { parseAs: 'buffer' as const, bodyLimit: deps.webhookBodyLimit };
  app.addContentTypeParser('application/json', raw, (_req, body, done) => done(null, body));
  app.addContentTypeParser('application/x-www-form-urlencoded', raw, (_req, body, done) => done(null, body));

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
