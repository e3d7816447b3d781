import { z } from 'zod';
import { GitRefName, PipelineName, StageName } from './common.js';

const Glob = z.string().min(1).max(255);
/** include/exclude globs, as CodePipeline V2 trigger filters (at most 8 each). */
export const GlobFilter = z
  .object({
    include: z.array(Glob).max(8).default([]),
    exclude: z.array(Glob).max(8).default([]),
  })
  .strict();
export type GlobFilter = z.infer<typeof GlobFilter>;

export const PushTrigger = z
  .object({
    event: z.literal('push'),
    branches: GlobFilter.optional(),
    tags: GlobFilter.optional(),
    filePaths: GlobFilter.optional(),
  })
  .strict();
export type PushTrigger = z.infer<typeof PushTrigger>;

/** Repository locations Conveyor can clone. Credentials in the URL are refused: they would end up in job payloads. */
export const RepositoryUrl = z
  .string()
  .min(1)
  .max(2048)
  .refine((s) => /^(file:\/\/\/|https?:\/\/|ssh:\/\/|git@[^:]+:)/.test(s), 'must be a file:///, http(s)://, ssh:// or git@host: URL')
  // Any user info but ssh's plain user name may be a token (https://ghp_…@host): it would reach job payloads and logs.
  .refine((s) => !/^[a-z+]+:\/\/[^/@]*@/i.test(s) || /^ssh:\/\/[A-Za-z0-9._-]+@/.test(s), 'must not embed credentials');

export const SourceConfig = z
  .object({
    provider: z.enum(['github', 'generic']),
    repository: RepositoryUrl,
    branch: GitRefName.default('main'),
    /** Write-only: stored, never returned by the API. */
    webhookSecret: z.string().min(16, 'at least 16 characters').max(256).optional(),
    /** Absent: pushes to `branch` trigger a run, as CodePipeline V2 does by default. */
    triggers: z.array(PushTrigger).max(50).optional(),
  })
  .strict();
export type SourceConfig = z.infer<typeof SourceConfig>;

/** `__proto__` as a key of a plain object sets its prototype instead: the value would be lost. */
const notProto = (n: string) => n !== '__proto__';
/**
 * A NUL cannot be in an environment value: no process could be started with it. Checked on new input
 * (pipeline variables, run requests; stage environments when a pipeline is defined, by source-webhook)
 * but not in `EnvVariables`, which stored runs' plans and jobs are parsed with: the build fails such a
 * job itself, saying why.
 */
export const EnvValue = z.string().refine((v) => !v.includes('\0'), 'must not contain a NUL character');
const EnvVarName = z.string().regex(/^[A-Za-z_][A-Za-z0-9_]*$/, 'not an environment variable name')
  .refine((n) => !n.startsWith('CODEBUILD_'), 'names starting CODEBUILD_ are reserved');
/** An own `__proto__` key (JSON.parse and YAML make one): a record would drop it without a word. */
const withoutProtoKey = z.unknown().refine((v) => typeof v !== 'object' || v === null || !Object.hasOwn(v, '__proto__'), { message: '__proto__ is not allowed', path: ['__proto__'] });
export const EnvVariables = withoutProtoKey.pipe(z.record(EnvVarName, z.string().max(32_768)));

/** CodePipeline's pattern for a variable's name and an action's namespace. */
export const VariableName = z.string().min(1).max(128).regex(/^[A-Za-z0-9@_-]+$/, 'must match ^[A-Za-z0-9@_-]+$').refine(notProto, '__proto__ is not allowed');

const BuildLike = {
  name: StageName,
  /**
   * Another name for `#{<namespace>.<NAME>}` references to the variables this stage exports, as
   * CodePipeline's action namespace (the stage's name works too). Unique among stage names and namespaces.
   */
  namespace: VariableName.max(100).optional(),
  /** Path of the buildspec inside the stage's input artifact. */
  buildspec: z
    .string()
    .min(1)
    .max(1024)
    .refine((p) => !p.startsWith('/') && !p.split('/').includes('..') && !p.includes('\0'), 'must be a path inside the source (relative, without ..)')
    .default('buildspec.yml'),
  /** Overrides the buildspec's env.variables (pipeline definition > buildspec). */
  env: z.object({ variables: EnvVariables.default({}) }).strict().default({ variables: {} }),
  timeoutMinutes: z.number().int().min(1).max(2160).default(60),
};

export const BuildStage = z.object({ ...BuildLike, type: z.literal('build') }).strict();
export const TestStage = z.object({ ...BuildLike, type: z.literal('test') }).strict();

export const LocalTarget = z
  .object({
    kind: z.literal('local'),
    /** Shell command run in the unpacked artifact; receives PORT. */
    command: z.string().min(1).max(4096),
    healthPath: z.string().regex(/^\/[^\s]*$/, 'must start with /').default('/healthz'),
    healthTimeoutSeconds: z.number().int().min(1).max(3600).default(60),
    env: EnvVariables.default({}),
  })
  .strict();
export const DeployTarget = z.discriminatedUnion('kind', [LocalTarget]);
export type DeployTarget = z.infer<typeof DeployTarget>;

export const DeployStage = z.object({ name: StageName, type: z.literal('deploy'), target: DeployTarget }).strict();

export const VerifySettings = z
  .object({
    healthPath: z.string().regex(/^\/[^\s]*$/, 'must start with /').default('/healthz'),
    durationSeconds: z.number().int().min(1).max(86_400).default(60),
    intervalSeconds: z.number().min(0.1).max(3600).default(5),
    /** Probes allowed to fail before the stage fails; 0 = any failed probe fails it. */
    maxFailures: z.number().int().min(0).default(0),
    timeoutMs: z.number().int().min(50).max(60_000).default(2000),
  })
  .strict();
export type VerifySettings = z.infer<typeof VerifySettings>;

export const MonitorStage = z
  .object({ name: StageName, type: z.literal('monitor'), verify: VerifySettings.default(VerifySettings.parse({})) })
  .strict();

/**
 * A pipeline-level variable, as CodePipeline V2 declares one: `#{variables.<name>}` in a stage's
 * environment. Its value is given when a run is started by hand, else its default.
 */
export const PipelineVariable = z
  .object({
    name: VariableName,
    defaultValue: EnvValue.min(1).max(1000).optional(),
    description: z.string().max(200).optional(),
  })
  .strict();
export type PipelineVariable = z.infer<typeof PipelineVariable>;

export const StageDefinition = z.discriminatedUnion('type', [BuildStage, TestStage, DeployStage, MonitorStage]);
export type StageDefinition = z.infer<typeof StageDefinition>;

/** Registered through `POST /api/v1/pipelines` (JSON or YAML). A Source stage is implicit and always first. */
export const PipelineDefinition = z
  .object({
    name: PipelineName,
    source: SourceConfig,
    /** Pipeline-level variables (CodePipeline allows 50). */
    variables: z
      .array(PipelineVariable)
      .max(50)
      .default([])
      .superRefine((vars, ctx) => {
        const seen = new Set<string>();
        vars.forEach((v, i) => {
          if (seen.has(v.name)) ctx.addIssue({ code: 'custom', path: [i, 'name'], message: `duplicate variable "${v.name}"` });
          seen.add(v.name);
        });
      }),
    stages: z
      .array(StageDefinition)
      .min(1)
      .max(50)
      .superRefine((stages, ctx) => {
        // Source is the implicit first stage; codepipeline and variables are namespaces of their own (ADR 0011).
        const seen = new Set<string>(['Source', 'codepipeline', 'variables']);
        stages.forEach((s, i) => {
          if (seen.has(s.name)) ctx.addIssue({ code: 'custom', path: [i, 'name'], message: `duplicate or reserved stage name "${s.name}"` });
          seen.add(s.name);
        });
        // A namespace is another name for a stage's variables: it may not be any stage's name or namespace.
        stages.forEach((s, i) => {
          if (!('namespace' in s) || s.namespace === undefined || s.namespace === s.name) return;
          if (seen.has(s.namespace)) ctx.addIssue({ code: 'custom', path: [i, 'namespace'], message: `namespace "${s.namespace}" is already a stage name, a namespace or reserved` });
          seen.add(s.namespace);
        });
        stages.forEach((s, i) => {
          if (s.type === 'monitor' && !stages.slice(0, i).some((p) => p.type === 'deploy')) {
            ctx.addIssue({ code: 'custom', path: [i, 'type'], message: 'a monitor stage needs a deploy stage before it' });
          }
        });
      }),
  })
  .strict();
export type PipelineDefinition = z.infer<typeof PipelineDefinition>;
export type PipelineDefinitionInput = z.input<typeof PipelineDefinition>;

/** What the API returns: the definition without its write-only secret, and without `variables` when it declares none. */
export type PipelineView = Omit<PipelineDefinition, 'source' | 'variables'> & {
  source: Omit<SourceConfig, 'webhookSecret'> & { hasWebhookSecret: boolean };
  variables?: PipelineVariable[];
};

export function toPipelineView(def: PipelineDefinition): PipelineView {
  const { webhookSecret, ...source } = def.source;
  const { name, variables, stages } = def;
  // In the order a definition is written: name, source, variables, stages.
  return { name, source: { ...source, hasWebhookSecret: webhookSecret !== undefined }, ...(variables.length > 0 ? { variables } : {}), stages };
}
