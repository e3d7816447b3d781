import { maxHeaderSize, STATUS_CODES } from 'node:http';
import type { Socket } from 'node:net';
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
  /**
   * A connection that sends nothing for this long is closed (default 30 s), and a request must have
   * arrived whole within `requestTimeoutMs` (default 120 s): a sender cannot hold a connection, or the
   * memory a body reserves, open for ever.
   */
  idleTimeoutMs?: number;
  requestTimeoutMs?: number;
}

const PROBLEM_TYPE = 'https://conveyor.dev/problems/';
/** The longest path parameter the router takes (fastify's default, stated so a 414 can name it). */
const MAX_PARAM_LENGTH = 100;

export function sendProblem(reply: FastifyReply, status: number, title: string, detail?: string, errors?: FieldIssue[]) {
  return reply.code(status).type('application/problem+json').send(problem(status, title, detail, errors));
}

function problem(status: number, title: string, detail?: string, errors?: FieldIssue[]) {
  return { type: `${PROBLEM_TYPE}${status}`, title, status, ...(detail ? { detail } : {}), ...(errors?.length ? { errors } : {}) };
}

let parsersSymbol: symbol | undefined;
/**
 * The limit the body parser for this request's content type enforces. fastify keeps it on the parser
 * (from `addContentTypeParser(…, { bodyLimit })`, else the app's) but has no public getter, so this reads
 * its internal table; if a fastify upgrade moves it, the 413 names no limit rather than a wrong one
 * (and http.test.ts fails).
 */
function parserBodyLimit(request: FastifyRequest): number | undefined {
  const server = request.server as unknown as Record<symbol, { getParser?: (contentType: string) => { bodyLimit?: unknown } | undefined }>;
  parsersSymbol ??= Object.getOwnPropertySymbols(server).find((s) => s.description === 'fastify.contentTypeParser');
  const limit = parsersSymbol ? server[parsersSymbol]?.getParser?.(request.headers['content-type'] ?? '')?.bodyLimit : undefined;
  return typeof limit === 'number' ? limit : undefined;
}

/** Answers fastify's router errors (a bad or over-long path), which never reach the error handler. */
function frameworkProblem(error: FastifyError): { status: number; title: string; detail?: string } {
  // Their messages quote the path: not echoed.
  if (error.code === 'FST_ERR_MAX_PARAM_LENGTH') return { status: 414, title: 'URI Too Long', detail: `a path parameter is longer than ${MAX_PARAM_LENGTH} characters` };
  if (error.code === 'FST_ERR_BAD_URL') return { status: 400, title: 'Bad Request', detail: 'the path is not valid percent-encoding' };
  return { status: 500, title: 'Internal Server Error' };
}

/** What node's HTTP parser refuses, answered as problem+json (fastify's default sends its own JSON). */
function clientErrorHandler(logger: Logger) {
  return (err: Error & { code?: string }, socket: Socket) => {
    if (err.code === 'ECONNRESET' || socket.destroyed) return;
    const [status, detail] =
      err.code === 'ERR_HTTP_REQUEST_TIMEOUT' ? [408, 'the request was not received in time']
      : err.code === 'HPE_HEADER_OVERFLOW' ? [431, `the request headers are over ${maxHeaderSize} bytes`]
      : [400, 'the request is not valid HTTP/1.1'];
    logger.debug({ err }, 'client error');
    const body = JSON.stringify(problem(status, STATUS_CODES[status]!, detail));
    if (socket.writable) {
      socket.write(`HTTP/1.1 ${status} ${STATUS_CODES[status]}\r\nContent-Type: application/problem+json\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`);
    }
    socket.destroy(err);
  };
}

/** Redis's answers that mean "not now": nothing was done, and the same request may succeed later. */
const REDIS_REFUSALS = /^(OOM|READONLY|MISCONF|EXECABORT|LOADING|BUSY|MASTERDOWN|TRYAGAIN|CLUSTERDOWN) /;

/** Body types a route may take, named in a 415's detail when its context has a parser for them. */
const KNOWN_TYPES = ['application/json', 'application/yaml', 'application/x-www-form-urlencoded'];

function mapError(error: unknown, request?: FastifyRequest, routeBodyLimits?: Map<string, number>): { status: number; title: string; detail?: string; errors?: FieldIssue[] } {
  if (error instanceof InputError) return { status: 400, title: 'Bad Request', detail: error.message, errors: error.issues };
  if (error instanceof UnauthorizedError) return { status: 401, title: 'Unauthorized', detail: error.message, errors: error.issues };
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
    if (fe.statusCode === 413 && request) {
      // A route's own bodyLimit wins over its parser's (fastify's rule).
      const limit = routeBodyLimits?.get(`${request.method} ${request.routeOptions.url}`) ?? parserBodyLimit(request);
      if (limit) detail = `${fe.message}: at most ${limit} bytes`;
    }
    const errors = fe.statusCode === 413 ? [{ path: 'body', message: 'too large' }] : fe.statusCode === 415 ? [{ path: 'headers.content-type', message: 'not a type this route takes' }] : undefined;
    return { status: fe.statusCode, title: STATUS_CODES[fe.statusCode] ?? 'Bad Request', detail, ...(errors ? { errors } : {}) };
  }
  // ioredis offline-queue / connection errors: the producer fails fast, the caller retries later.
  if (error instanceof Error && (error.name === 'MaxRetriesPerRequestError' || /Stream isn't writeable|Connection is closed|ECONNREFUSED|enableOfflineQueue|Command timed out/.test(error.message))) {
    return { status: 503, title: 'Service Unavailable', detail: 'storage is unreachable; retry later' };
  }
  // Redis there but refusing for now (out of memory, a failed save, a replica after failover, loading, a
  // busy script; EXECABORT wraps one of these in a transaction): nothing was written, retry later.
  if (error instanceof Error && REDIS_REFUSALS.test(error.message)) {
    return { status: 503, title: 'Service Unavailable', detail: `storage refuses the request now (${error.message.split(' ', 1)[0]}); retry later` };
  }
  return { status: 500, title: 'Internal Server Error' };
}

/** A fastify app with zod validation, problem+json errors, /healthz, /readyz and /metrics. Never listens. */
export function buildBaseServer(opts: BaseServerOptions): App {
  const app = Fastify({
    loggerInstance: opts.logger,
    bodyLimit: opts.bodyLimit ?? 1024 * 1024,
    connectionTimeout: opts.idleTimeoutMs ?? 30_000, // see the hooks below
    requestTimeout: opts.requestTimeoutMs ?? 120_000,
    routerOptions: { maxParamLength: MAX_PARAM_LENGTH },
    frameworkErrors: (error, request, reply) => {
      const mapped = frameworkProblem(error);
      if (mapped.status >= 500) request.log.error({ err: error }, 'request failed');
      void sendProblem(reply, mapped.status, mapped.title, mapped.detail);
    },
    clientErrorHandler: clientErrorHandler(opts.logger),
    // Per-request lines would drown the logs in probes; services log what matters themselves.
    logController: new LogController({ disableRequestLogging: true }),
  }).withTypeProvider<ZodTypeProvider>();
  // The idle limit guards the receiving of a request. Once it is in, the answer may take its time to
  // compute or to reach a slow client (Node refreshes the timer only as a write completes: a large
  // log read at a few hundred KB/s would be cut); after the answer, a kept-alive socket is idle again.
  const idleMs = opts.idleTimeoutMs ?? 30_000;
  // (A request injected in tests has a socket without timers.)
  const idle = (socket: { setTimeout?: unknown } | null | undefined, ms: number) => {
    if (typeof socket?.setTimeout === 'function') (socket as import('node:net').Socket).setTimeout(ms);
  };
  app.addHook('preHandler', async (request) => idle(request.raw.socket, 0));
  app.addHook('onResponse', async (_request, reply) => idle(reply.raw.socket, idleMs));
  app.setValidatorCompiler(validatorCompiler);
  app.setSerializerCompiler(serializerCompiler);

  const routeBodyLimits = new Map<string, number>();
  app.setErrorHandler((error, request: FastifyRequest, reply) => {
    const mapped = mapError(error, request, routeBodyLimits);
    if (mapped.status >= 500) request.log.error({ err: error, url: request.url }, 'request failed');
    return sendProblem(reply, mapped.status, mapped.title, mapped.status >= 500 && mapped.status !== 503 ? undefined : mapped.detail, mapped.errors);
  });
  // A path that exists with other methods is a 405 naming them (Allow), not a 404.
  const routes: { pattern: RegExp; methods: string[] }[] = [];
  app.addHook('onRoute', (route) => {
    const methods = (Array.isArray(route.method) ? route.method : [route.method]).map(String);
    const pattern = new RegExp(`^${route.url.split('/').map((part) => (part.startsWith(':') ? '[^/]+' : part === '*' ? '.*' : part.replace(/[.*+?^${}()|[\]\\]/g, '\\$&'))).join('/')}$`);
    routes.push({ pattern, methods });
    if (route.bodyLimit) for (const method of methods) routeBodyLimits.set(`${method} ${route.url}`, route.bodyLimit);
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
