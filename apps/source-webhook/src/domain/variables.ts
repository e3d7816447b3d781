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
  }
  return { env: out };
}

function lookUp(run: Run, i: number, namespace: string, variable: string): string | undefined {
  if (namespace === 'codepipeline') return variable === 'PipelineExecutionId' ? run.id : undefined;
  if (namespace === 'Source') {
    if (variable === 'CommitId') return run.commit;
    if (variable === 'BranchName') return splitRef(run.trigger.ref ?? '').branch;
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
    const fields = stage.type === 'build' || stage.type === 'test' ? { at: `stages.${i}.env.variables`, env: stage.env.variables } : stage.type === 'deploy' ? { at: `stages.${i}.target.env`, env: stage.target.env } : undefined;
    if (!fields) return;
    const exporters = new Set(def.stages.slice(0, i).filter((s) => s.type === 'build' || s.type === 'test').map((s) => s.name));
    for (const [name, value] of Object.entries(fields.env)) {
      for (const [text, namespace, variable] of value.matchAll(REFERENCE)) {
        const problem =
          namespace === 'codepipeline'
            ? variable === 'PipelineExecutionId'
              ? undefined
              : 'codepipeline has only PipelineExecutionId'
            : namespace === 'Source'
              ? (SOURCE_VARIABLES as readonly string[]).includes(variable!)
                ? undefined
                : `Source has only ${SOURCE_VARIABLES.join(' and ')}`
              : exporters.has(namespace!)
                ? undefined
                : `no build or test stage ${namespace} runs before this one`;
        if (problem) issues.push({ path: `${fields.at}.${name}`, message: `${text}: ${problem}` });
      }
    }
  });
  return issues;
}
