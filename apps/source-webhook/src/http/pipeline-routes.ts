import { parseDocument } from 'yaml';
import { z } from 'zod';
import { PipelineDefinition, PipelineName, StartRunBody, toPipelineView, toRunView, type Trigger } from '@conveyor/contracts';
import { InputError, issuesFromZod, NotFoundError, poisonedKeyError, type App } from '@conveyor/service-kit';
import { triggerGlobIssues } from '../domain/triggers.js';
import { runVariables, variableIssues } from '../domain/variables.js';
import type { ServerDeps } from './server.js';

const YAML_TYPES = ['application/yaml', 'application/x-yaml', 'text/yaml'];
const MAX_DEFINITION_BYTES = 256 * 1024;
/** The most a YAML definition may expand to through its aliases, as JSON: what a JSON body may be (1 MiB). */
const MAX_EXPANDED_BYTES = 1024 * 1024;

/**
 * A YAML definition as data. Refused, naming the place but never quoting the text (a line may hold the
 * webhook secret): a syntax error, a warning (an unknown tag such as `!vault`, which would otherwise
 * read as a plain string), duplicate keys, several documents, more than 50 aliases, an expansion past
 * MAX_EXPANDED_BYTES, and keys that could reach a prototype. Nothing is printed (the library's default
 * prints warnings, with the line, to stderr).
 */
function parseYamlDefinition(text: string): unknown {
  const doc = parseDocument(text, { prettyErrors: true, logLevel: 'silent', uniqueKeys: true });
  const problem = doc.errors[0] ?? doc.warnings[0];
  if (problem) {
    // The first line only: the next ones quote the source.
    throw new InputError(`body is not a valid YAML definition: ${problem.message.split('\n')[0]!.replace(/:$/, '')}`, [{ path: 'body', message: 'invalid YAML' }]);
  }
  let data: unknown;
  try {
    data = doc.toJS({ maxAliasCount: 50 });
  } catch (err) {
    throw new InputError(`body is not a valid YAML definition: ${(err as Error).message.split('\n')[0]}`, [{ path: 'body', message: 'invalid YAML' }]);
  }
  const poisoned = poisonedKeyError(data);
  if (poisoned) throw poisoned;
  const expanded = Buffer.byteLength(JSON.stringify(data) ?? '');
  if (expanded > MAX_EXPANDED_BYTES) {
    throw new InputError(`body expands through its aliases to ${expanded} bytes of definition, more than ${MAX_EXPANDED_BYTES}`, [{ path: 'body', message: 'expands to too large a definition' }]);
  }
  return data;
}

/** What GET adds to a definition (read-only): a GET-edit-POST round trip may carry it back, and it is ignored. */
function withoutViewFields(body: unknown): unknown {
  if (typeof body !== 'object' || body === null || Array.isArray(body)) return body;
  const { source } = body as { source?: unknown };
  if (typeof source !== 'object' || source === null || Array.isArray(source) || !('hasWebhookSecret' in source)) return body;
  const { hasWebhookSecret: _readOnly, ...rest } = source as Record<string, unknown>;
  return { ...body, source: rest };
}

function parseDefinitionBody(body: unknown) {
  const parsed = PipelineDefinition.safeParse(withoutViewFields(body));
  if (!parsed.success) throw new InputError('invalid pipeline definition', issuesFromZod(parsed.error));
  // Refused here, naming the field, rather than at each push (which would then run nothing, saying why).
  const issues = [...triggerGlobIssues(parsed.data), ...variableIssues(parsed.data)];
  if (issues.length > 0) throw new InputError('invalid pipeline definition', issues);
  return parsed.data;
}

export const pipelineRoutes = (deps: ServerDeps) => async (app: App) => {
  app.addContentTypeParser(YAML_TYPES, { parseAs: 'string', bodyLimit: MAX_DEFINITION_BYTES }, (_req, body, done) => {
    try {
      done(null, parseYamlDefinition(body as string));
    } catch (err) {
      done(err as Error, undefined);
    }
  });

  const Name = z.object({ name: PipelineName });

  app.post('/pipelines', async (req, reply) => {
    const def = parseDefinitionBody(req.body);
    // Without a secret of its own, the definition keeps the stored one (see PipelineStore.put).
    const { created, definition } = await deps.pipelines.put(def);
    req.log.info({ pipeline: def.name, created }, 'pipeline stored');
    return reply.code(created ? 201 : 200).send(toPipelineView(definition));
  });

  app.get('/pipelines', async () => ({ pipelines: (await deps.pipelines.list()).map(toPipelineView) }));

  app.get('/pipelines/:name', { schema: { params: Name } }, async (req) => {
    const def = await deps.pipelines.get(req.params.name);
    if (!def) throw new NotFoundError(`pipeline ${req.params.name} not found`);
    return toPipelineView(def);
  });

  // Its runs stay readable, and a run under way goes on (each carries its plan); webhooks for it are 401 from now on (no secret signs them).
  app.delete('/pipelines/:name', { schema: { params: Name } }, async (req, reply) => {
    if (!(await deps.pipelines.remove(req.params.name))) throw new NotFoundError(`pipeline ${req.params.name} not found`);
    req.log.info({ pipeline: req.params.name }, 'pipeline removed');
    return reply.code(204).send();
  });

  app.post('/pipelines/:name/runs', { schema: { params: Name } }, async (req, reply) => {
    const body = StartRunBody.safeParse(req.body ?? {});
    if (!body.success) throw new InputError('invalid run request', issuesFromZod(body.error, 'body'));
    const def = await deps.pipelines.get(req.params.name);
    if (!def) throw new NotFoundError(`pipeline ${req.params.name} not found`);
    // Checked against the pipeline as it is now; the run keeps the values (and the plan) it starts with.
    const { issues } = runVariables(def, body.data.variables, true);
    if (issues.length > 0) throw new InputError('invalid run request', issues);
    const ref = body.data.ref ?? def.source.branch;
    const trigger: Trigger = { type: 'manual', ref: ref.startsWith('refs/') ? ref : `refs/heads/${ref}`, ...(body.data.commit ? { commit: body.data.commit } : {}) };
    const started = await deps.orchestrator.startRun(def, trigger, body.data.variables ? { variables: body.data.variables } : {});
    return reply.code(202).send({ runId: started.runId });
  });

  const RunsQuery = z.object({ limit: z.coerce.number().int().min(1).max(500).default(50), before: z.string().max(200).optional() });
  app.get('/pipelines/:name/runs', { schema: { params: Name, querystring: RunsQuery } }, async (req) => {
    const def = await deps.pipelines.get(req.params.name);
    if (!def) throw new NotFoundError(`pipeline ${req.params.name} not found`);
    let runs: Awaited<ReturnType<ServerDeps['runs']['listByPipeline']>>;
    try {
      runs = await deps.runs.listByPipeline(req.params.name, req.query.limit, req.query.before);
    } catch (err) {
      if (err instanceof RangeError) throw new InputError('invalid cursor', [{ path: 'querystring.before', message: 'not a `next` value of this list' }]);
      throw err;
    }
    return { runs: runs.map(toRunView), ...(runs.next ? { next: runs.next } : {}), ...(runs.unreadable ? { unreadable: runs.unreadable } : {}) };
  });
};
