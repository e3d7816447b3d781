import type { PipelineDefinition, Run } from '@conveyor/contracts';
import { splitRef } from './triggers.js';

/**
 * CodePipeline's variables in the values of a stage's environment (`env.variables` of build and test
 * stages, `target.env` of deploy stages): `#{codepipeline.PipelineExecutionId}` (the run id),
 * `#{Source.CommitId}` and `#{Source.BranchName}`, `#{variables.<NAME>}` for a pipeline-level variable
 * (given when the run was started, else its default), and `#{<Stage>.<NAME>}` for a variable an earlier
 * build or test stage exported (`env.exported-variables` of its buildspec), by the stage's name or its
 * `namespace`. Values are resolved when the stage's job is built, from what the run has recorded, and
 * reach the stage as environment variables, never as shell text.
 */
const REFERENCE = /#\{([A-Za-z0-9@_-]+)\.([A-Za-z0-9@_-]+)\}/g;

const SOURCE_VARIABLES = ['CommitId', 'BranchName'] as const;

/** What looks like a reference (`#{…}`): one that is not a valid one is refused when a pipeline is defined. */
const LOOKS_LIKE = /#\{[^}]*\}/g;

/** The longest value a stage's environment takes (EnvVariables in contracts). */
const MAX_VALUE = 32_768;

/** The environment of stage i (its index in `run.stages`), with every reference resolved; or why it cannot be. */
export function resolveVariables(env: Readonly<Record<string, string>>, run: Run, i: number, field: string): { env: Record<string, string> } | { error: string } {
  // Most environments hold no reference: they are passed as they are.
  if (!Object.values(env).some((v) => v.includes('#{'))) return { env: env as Record<string, string> };
  const out: Record<string, string> = {};
  for (const [name, value] of Object.entries(env)) {
    let problem: string | undefined;
    out[name] = value.replace(REFERENCE, (text, namespace: string, variable: string) => {
      const resolved = lookUp(run, i, namespace, variable);
      if (resolved === undefined) problem ??= `${field}.${name}: ${text} is not set: ${why(run, i, namespace, variable)}`;
      return resolved ?? '';
    });
    if (problem) return { error: problem };
    // Exported values may be long: past the contract's limit the job would be refused by its worker, unexplained.
    if (out[name]!.length > MAX_VALUE) return { error: `${field}.${name}: ${out[name]!.length} characters once its variables are resolved, more than the ${MAX_VALUE} allowed` };
  }
  return { env: out };
}

/** The earlier stage (of stage i) whose variables `namespace` names: by its name or its namespace. */
function exporter(run: Run, i: number, namespace: string): Run['stages'][number] | undefined {
  for (let j = 1; j < i; j++) {
    const def = run.plan.stages[j - 1];
    if (run.stages[j]!.name === namespace || (def && 'namespace' in def && def.namespace === namespace)) return run.stages[j];
  }
  return undefined;
}

function lookUp(run: Run, i: number, namespace: string, variable: string): string | undefined {
  if (namespace === 'codepipeline') return variable === 'PipelineExecutionId' ? run.id : undefined;
  if (namespace === 'variables') return run.variables && Object.hasOwn(run.variables, variable) ? run.variables[variable] : undefined;
  if (namespace === 'Source') {
    if (variable === 'CommitId') return run.commit;
    // Empty for a run of a tag (or of a commit alone): the variable exists, the run has no branch.
    if (variable === 'BranchName') return splitRef(run.trigger.ref ?? '').branch ?? '';
    return undefined;
  }
  const stage = exporter(run, i, namespace);
  const exported = stage?.status === 'SUCCEEDED' ? stage.result?.exportedVariables : undefined;
  return exported && Object.hasOwn(exported, variable) ? exported[variable] : undefined;
}

/**
 * Why a new run cannot go through, known when it is created: a stage refers to a pipeline variable the
 * run has no value for (one without a default, in a run from a push, which cannot be given values).
 * Failing then spares the stages before it. Undefined when every variable used has a value.
 */
export function unsetPipelineVariable(def: PipelineDefinition, values: Readonly<Record<string, string>>): string | undefined {
  const declared = new Set(def.variables.map((v) => v.name));
  for (const stage of def.stages) {
    const env = stageEnv(stage);
    if (!env) continue;
    for (const [name, value] of Object.entries(env.vars)) {
      if (!value.includes('#{variables.')) continue;
      for (const [text, namespace, variable] of value.matchAll(REFERENCE)) {
        if (namespace === 'variables' && !Object.hasOwn(values, variable!)) {
          const why = declared.has(variable!) ? 'it has no default value, and only a run started by hand can be given one' : 'the pipeline declares no such variable';
          return `${text} in ${stage.name}'s ${env.at}.${name} has no value: ${why}`;
        }
      }
    }
  }
  return undefined;
}

function why(run: Run, i: number, namespace: string, variable: string): string {
  if (namespace === 'codepipeline' || namespace === 'Source') return `${namespace} has no variable ${variable} for this run`;
  if (namespace === 'variables') return `the pipeline variable ${variable} is not declared, or has no default value and was not given when the run was started`;
  const stage = exporter(run, i, namespace);
  if (!stage) return `no stage ${namespace} runs before this one`;
  if (stage.status !== 'SUCCEEDED') return `stage ${namespace} did not succeed`;
  return `stage ${namespace} exported no variable ${variable} (list it under env.exported-variables in its buildspec)`;
}

/**
 * The references of a definition that can never resolve, as issues naming their fields: a namespace that
 * is no earlier build or test stage (by name or `namespace`), `Source`, `codepipeline` or `variables`, a
 * variable the first two do not have, or a pipeline variable not declared.
 * Whether a stage exports a variable is known only when it has run.
 */
export function variableIssues(def: PipelineDefinition): Array<{ path: string; message: string }> {
  const issues: Array<{ path: string; message: string }> = [];
  const declared = new Set(def.variables.map((v) => v.name));
  def.stages.forEach((stage, i) => {
    if (stage.type === 'deploy') {
      const refs = stage.target.command.match(REFERENCE);
      if (refs) issues.push({ path: `stages.${i}.target.command`, message: `${refs[0]}: variables are not put into commands; set one in target.env and use it as $NAME` });
    }
    const env = stageEnv(stage);
    if (!env) return;
    const exporters = new Set(def.stages.slice(0, i).flatMap((s) => (s.type === 'build' || s.type === 'test' ? [s.name, ...(s.namespace ? [s.namespace] : [])] : [])));
    for (const [name, value] of Object.entries(env.vars)) {
      const path = `stages.${i}.${env.at}.${name}`;
      if (value.includes('\0')) issues.push({ path, message: 'must not contain a NUL character' });
      for (const [text] of value.matchAll(LOOKS_LIKE)) {
        const problem = referenceProblem(text, exporters, declared);
        if (problem) issues.push({ path, message: `${text}: ${problem}` });
      }
    }
  });
  return issues;
}

/** Why a `#{…}` text can never resolve in a stage after `exporters`, with these pipeline variables `declared`; undefined when it can. */
function referenceProblem(text: string, exporters: ReadonlySet<string>, declared: ReadonlySet<string>): string | undefined {
  const [, namespace, variable] = new RegExp(`^${REFERENCE.source}$`).exec(text) ?? [];
  if (namespace === undefined || variable === undefined) return 'not a variable reference: #{Namespace.Variable}, of letters, digits, @, _ and -';
  switch (namespace) {
    case 'codepipeline':
      return variable === 'PipelineExecutionId' ? undefined : 'codepipeline has only PipelineExecutionId';
    case 'Source':
      return (SOURCE_VARIABLES as readonly string[]).includes(variable) ? undefined : `Source has only ${SOURCE_VARIABLES.join(' and ')}`;
    case 'variables':
      return declared.has(variable) ? undefined : `no pipeline variable ${variable} is declared (under variables)`;
    default:
      if (exporters.has(namespace)) return undefined;
      return `no build or test stage ${namespace} runs before this one${namespace === 'SourceVariables' ? " (the source's namespace is Source)" : ''}`;
  }
}

/** The environment a stage's references may be in, and its field: build and test `env.variables`, deploy `target.env`. */
function stageEnv(stage: PipelineDefinition['stages'][number]): { at: string; vars: Readonly<Record<string, string>> } | undefined {
  if (stage.type === 'build' || stage.type === 'test') return { at: 'env.variables', vars: stage.env.variables };
  if (stage.type === 'deploy') return { at: 'target.env', vars: stage.target.env };
  return undefined;
}

/**
 * The pipeline-level variables of a new run: each declared one's given value, else its default. A
 * variable without a default that is not given stays unset: a stage referring to it fails, naming it.
 * Values given for undeclared variables are refused (issues name `body.variables.<i>.name`), and so,
 * when `requireAll` (a run started by hand, where they can be given), are missing ones without defaults.
 * Undefined when the pipeline declares none: the run then carries no `variables`.
 */
export function runVariables(
  def: PipelineDefinition,
  given: ReadonlyArray<{ name: string; value: string }> = [],
  requireAll = false,
): { variables?: Record<string, string>; issues: Array<{ path: string; message: string }> } {
  if (def.variables.length === 0 && given.length === 0) return { issues: [] };
  const issues: Array<{ path: string; message: string }> = [];
  const declared = new Map(def.variables.map((v) => [v.name, v]));
  given.forEach((g, i) => {
    if (!declared.has(g.name)) issues.push({ path: `body.variables.${i}.name`, message: `pipeline ${def.name} declares no variable ${g.name}` });
  });
  if (def.variables.length === 0) return { issues };
  const variables: Record<string, string> = {};
  for (const v of def.variables) if (v.defaultValue !== undefined) variables[v.name] = v.defaultValue;
  for (const g of given) if (declared.has(g.name)) variables[g.name] = g.value;
  if (requireAll) {
    const missing = def.variables.filter((v) => !Object.hasOwn(variables, v.name)).map((v) => v.name);
    if (missing.length) issues.push({ path: 'body.variables', message: `no value for ${missing.join(', ')}, which ${missing.length === 1 ? 'has' : 'have'} no default value` });
  }
  return { variables, issues };
}
