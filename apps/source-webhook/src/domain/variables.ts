import type { PipelineDefinition, Run } from '@conveyor/contracts';
import { splitRef } from './triggers.js';

/**
 * CodePipeline's variables in the values of a stage's environment (`env.variables` of build and test
 * stages, `target.env` of deploy stages): `#{codepipeline.PipelineExecutionId}` (the run id),
 * `#{Source.CommitId}` and `#{Source.BranchName}`, and `#{<Stage>.<NAME>}` for a variable an earlier
 * build or test stage exported (`env.exported-variables` of its buildspec). A stage's name is its
 * namespace (CodePipeline names one per action). Values are resolved when the stage's job is built,
 * from what the run has recorded, and reach the stage as environment variables, never as shell text.
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

function lookUp(run: Run, i: number, namespace: string, variable: string): string | undefined {
  if (namespace === 'codepipeline') return variable === 'PipelineExecutionId' ? run.id : undefined;
  if (namespace === 'Source') {
    if (variable === 'CommitId') return run.commit;
    // Empty for a run of a tag (or of a commit alone): the variable exists, the run has no branch.
    if (variable === 'BranchName') return splitRef(run.trigger.ref ?? '').branch ?? '';
    return undefined;
  }
  const stage = run.stages.slice(1, i).find((s) => s.name === namespace);
  return stage?.status === 'SUCCEEDED' ? stage.result?.exportedVariables?.[variable] : undefined;
}

function why(run: Run, i: number, namespace: string, variable: string): string {
  if (namespace === 'codepipeline' || namespace === 'Source') return `${namespace} has no variable ${variable} for this run`;
  const stage = run.stages.slice(1, i).find((s) => s.name === namespace);
  if (!stage) return `no stage ${namespace} runs before this one`;
  if (stage.status !== 'SUCCEEDED') return `stage ${namespace} did not succeed`;
  return `stage ${namespace} exported no variable ${variable} (list it under env.exported-variables in its buildspec)`;
}

/**
 * The references of a definition that can never resolve, as issues naming their fields: a namespace that
 * is no earlier build or test stage, `Source` or `codepipeline`, or a variable those two do not have.
 * Whether a stage exports a variable is known only when it has run.
 */
export function variableIssues(def: PipelineDefinition): Array<{ path: string; message: string }> {
  const issues: Array<{ path: string; message: string }> = [];
  def.stages.forEach((stage, i) => {
    if (stage.type === 'deploy') {
      const refs = stage.target.command.match(REFERENCE);
      if (refs) issues.push({ path: `stages.${i}.target.command`, message: `${refs[0]}: variables are not put into commands; set one in target.env and use it as $NAME` });
    }
    const fields = stage.type === 'build' || stage.type === 'test' ? { at: `stages.${i}.env.variables`, env: stage.env.variables } : stage.type === 'deploy' ? { at: `stages.${i}.target.env`, env: stage.target.env } : undefined;
    if (!fields) return;
    const exporters = new Set(def.stages.slice(0, i).filter((s) => s.type === 'build' || s.type === 'test').map((s) => s.name));
    for (const [name, value] of Object.entries(fields.env)) {
      for (const [text] of value.matchAll(LOOKS_LIKE)) {
        const [, namespace, variable] = new RegExp(`^${REFERENCE.source}$`).exec(text) ?? [];
        const problem =
          namespace === undefined
            ? 'not a variable reference: #{Namespace.Variable}, of letters, digits, @, _ and -'
            : namespace === 'codepipeline'
              ? variable === 'PipelineExecutionId'
                ? undefined
                : 'codepipeline has only PipelineExecutionId'
              : namespace === 'Source'
                ? (SOURCE_VARIABLES as readonly string[]).includes(variable!)
                  ? undefined
                  : `Source has only ${SOURCE_VARIABLES.join(' and ')}`
                : exporters.has(namespace)
                  ? undefined
                  : `no build or test stage ${namespace} runs before this one${namespace === 'SourceVariables' ? " (the source's namespace is Source)" : ''}`;
        if (problem) issues.push({ path: `${fields.at}.${name}`, message: `${text}: ${problem}` });
      }
    }
  });
  return issues;
}
