import { STATUS_CODES } from 'node:http';
import Fastify, { LogController, type FastifyError, type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import { hasZodFastifySchemaValidationErrors, serializerCompiler, validatorCompiler, type ZodTypeProvider } from 'fastify-type-provider-zod';
import type { Registry } from 'prom-client';
import type { Logger } from './logger.js';
import {
  ConflictError,
  InputError,
  NotFoundError,
  UnauthorizedError,
  UnavailableError,
  type FieldIssue,
} from './errors.js';

export type App = FastifyInstance<any, any, any, Logger, ZodTypeProvider>;

export interface BaseServerOptions {
  logger: Logger;
  registry: Registry;
  /** Each check resolves when its dependency is usable; /readyz is 503 otherwise. */
  readiness: Record<string, () => Promise<void> | void>;
  bodyLimit?: number;
}

const PROBLEM_TYPE = 'https://conveyor.dev/problems/';

export function sendProblem(reply: FastifyReply, status: number, title: string, detail?: string, errors?: FieldIssue[]) {
  return reply
    .code(status)
    .type('application/problem+json')
    .send({ type: `${PROBLEM_TYPE}${status}`, title, status, ...(detail ? { detail } : {}), ...(errors?.length ? { errors } : {}) });
}

/** Body types a route may take, named in a 415's detail when its context has a parser for them. */
const KNOWN_TYPES = ['application/json', 'application/yaml', 'application/x-www-form-urlencoded'];

function mapError(error: unknown, request?: FastifyRequest): { status: number; title: string; detail?: string; errors?: FieldIssue[] } {
  if (error instanceof InputError) return { status: 400, title: 'Bad Request', detail: error.message, errors: error.issues };
  if (error instanceof UnauthorizedError) return { status: 401, title: 'Unauthorized', detail: error.message };
  if (error instanceof NotFoundError) return { status: 404, title: 'Not Found', detail: error.message };
  if (error instanceof ConflictError) return { status: 409, title: 'Conflict', detail: error.message };
  if (error instanceof UnavailableError) return { status: 503, title: 'Service Unavailable', detail: error.message };
  if (hasZodFastifySchemaValidationErrors(error)) {
    const errors = error.validation.map((v) => ({
      path: [error.validationContext, ...String(v.instancePath).split('/').filter(Boolean)].join('.'),
      message: v.message ?? 'invalid',
    }));
    return { status: 400, title: 'Bad Request', detail: errors.map((e) => `${e.path}: ${e.message}`).join('; '), errors };
  }
  const fe = error as FastifyError;
  if (typeof fe?.statusCode === 'number' && fe.statusCode >= 400 && fe.statusCode < 500) {
    // 413 body too large, 415 unsupported media type, …: fastify's own 4xx keep their status and name,
    // with what the route would take.
    let detail = fe.message;
    if (fe.statusCode === 415 && request) {
      const takes = KNOWN_TYPES.filter((t) => request.server.hasContentTypeParser(t));
      if (takes.length) detail = `${fe.message}; send ${takes.join(' or ')}`;
    }
    if (fe.statusCode === 413 && request?.routeOptions.bodyLimit) detail = `${fe.message}: at most ${request.routeOptions.bodyLimit} bytes`;
    return { status: fe.statusCode, title: STATUS_CODES[fe.statusCode] ?? 'Bad Request', detail };
  }
  // ioredis offline-queue / connection errors: the producer fails fast, the caller retries later.
  if (error instanceof Error && (error.name === 'MaxRetriesPerRequestError' || /Stream isn't writeable|Connection is closed|ECONNREFUSED|enableOfflineQueue|Command timed out/.test(error.message))) {
    return { status: 503, title: 'Service Unavailable', detail: 'storage is unreachable; retry later' };
  }
  return { status: 500, title: 'Internal Server Error' };
}

/** A fastify app with zod validation, problem+json errors, /healthz, /readyz and /metrics. Never listens. */
export function buildBaseServer(opts: BaseServerOptions): App {
  const app = Fastify({
    loggerInstance: opts.logger,
    bodyLimit: opts.bodyLimit ?? 1024 * 1024,
    // Per-request lines would drown the logs in probes; services log what matters themselves.
    logController: new LogController({ disableRequestLogging: true }),
  }).withTypeProvider<ZodTypeProvider>();
  app.setValidatorCompiler(validatorCompiler);
  app.setSerializerCompiler(serializerCompiler);

  app.setErrorHandler((error, request: FastifyRequest, reply) => {
    const mapped = mapError(error, request);
    if (mapped.status >= 500) request.log.error({ err: error, url: request.url }, 'request failed');
    return sendProblem(reply, mapped.status, mapped.title, mapped.status >= 500 && mapped.status !== 503 ? undefined : mapped.detail, mapped.errors);
  });
  // A path that exists with other methods is a 405 naming them (Allow), not a 404.
  const routes: { pattern: RegExp; methods: string[] }[] = [];
  app.addHook('onRoute', (route) => {
    const methods = (Array.isArray(route.method) ? route.method : [route.method]).map(String);
    const pattern = new RegExp(`^${route.url.split('/').map((part) => (part.startsWith(':') ? '[^/]+' : part === '*' ? '.*' : part.replace(/[.*+?^${}()|[\]\\]/g, '\\$&'))).join('/')}$`);
    routes.push({ pattern, methods });
  });
  app.setNotFoundHandler((request, reply) => {
    const path = request.url.split('?')[0]!;
    const allowed = [...new Set(routes.filter((r) => r.pattern.test(path)).flatMap((r) => r.methods))].sort();
    if (allowed.length) return sendProblem(reply.header('allow', allowed.join(', ')), 405, 'Method Not Allowed', `${path} takes ${allowed.join(', ')}, not ${request.method}`);
    return sendProblem(reply, 404, 'Not Found', `no route ${request.method} ${path}`);
  });

  app.get('/healthz', async () => ({ status: 'ok' }));
  app.get('/readyz', async (_req, reply) => {
    const checks: Record<string, string> = {};
    let ok = true;
    for (const [name, check] of Object.entries(opts.readiness)) {
      try {
        await check();
        checks[name] = 'ok';
      } catch (err) {
        ok = false;
        checks[name] = err instanceof Error ? err.message : 'failed';
      }
    }
    return reply.code(ok ? 200 : 503).send({ status: ok ? 'ready' : 'not ready', checks });
  });
  app.get('/metrics', async (_req, reply) => {
    reply.type(opts.registry.contentType);
    return opts.registry.metrics();
  });
  return app;
}
