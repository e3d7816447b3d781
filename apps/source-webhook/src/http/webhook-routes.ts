import type { App } from '@conveyor/service-kit';
import type { ServerDeps } from './server.js';

const header = (v: string | string[] | undefined) => (Array.isArray(v) ? v[0] : v);

export const webhookRoutes = (deps: ServerDeps) => async (app: App) => {
  // The signature covers the exact bytes sent: keep the raw body, parse JSON only after verifying.
  app.removeAllContentTypeParsers();
  app.addContentTypeParser('application/json', { parseAs: 'buffer', bodyLimit: deps.webhookBodyLimit }, (_req, body, done) => done(null, body));

  app.post('/github', async (req, reply) => {
    const rawBody = Buffer.isBuffer(req.body) ? req.body : Buffer.alloc(0);
    const result = await deps.intake.github({
      rawBody,
      event: header(req.headers['x-github-event']),
      deliveryId: header(req.headers['x-github-delivery']),
      signature: header(req.headers['x-hub-signature-256']),
    });
    return reply.code(result.status).send(result.body);
  });
};
