/** What codebuildEnv needs to know about the build; every value is given, nothing is read from the host. */
export interface CodebuildEnvInput {
  runId: string;
  pipeline: string;
  stage: string;
  /** The run's number: CODEBUILD_BUILD_NUMBER. */
  buildNumber: number;
  /** The resolved commit being built. */
  commit: string;
  repository: string;
  /** The ref the run was started for, e.g. `refs/heads/main` or `refs/tags/v1.2.0`. */
  ref: string;
  /** Why the run exists (the contracts' Trigger fits). */
  trigger: { type: 'webhook' | 'manual'; actor?: string; previousCommit?: string };
  /** Where the source is: CODEBUILD_SRC_DIR. */
  srcDir: string;
  home: string;
  /** TMPDIR, when the build has a temporary directory of its own. */
  tmpDir?: string;
  /** Unix time in milliseconds. */
  startTime: number;
  /** Makes the build id unique: `<project>:<uuid>`. */
  uuid: string;
  region?: string;
  /** The buildspec's env.variables (lowest precedence). */
  buildspecVariables?: Record<string, string>;
  /** The pipeline stage's env.variables (override the buildspec's). */
  stageVariables?: Record<string, string>;
}

/** The CodeBuild project a stage plays: `<pipeline>-<stage>`. */
export function projectName(pipeline: string, stage: string): string {
  return `${pipeline}-${stage}`;
}

/** `refs/heads/x` → `branch/x`, `refs/tags/x` → `tag/x`, as CODEBUILD_WEBHOOK_TRIGGER spells them. */
export function webhookTrigger(ref: string): string | undefined {
  if (ref.startsWith('refs/heads/')) return `branch/${ref.slice('refs/heads/'.length)}`;
  if (ref.startsWith('refs/tags/')) return `tag/${ref.slice('refs/tags/'.length)}`;
  return undefined;
}

function webhookVariables(input: CodebuildEnvInput): Record<string, string> {
  if (input.trigger.type !== 'webhook') return {};
  const out: Record<string, string> = { CODEBUILD_WEBHOOK_EVENT: 'PUSH', CODEBUILD_WEBHOOK_HEAD_REF: input.ref };
  const trigger = webhookTrigger(input.ref);
  if (trigger !== undefined) out.CODEBUILD_WEBHOOK_TRIGGER = trigger;
  if (input.trigger.previousCommit !== undefined) out.CODEBUILD_WEBHOOK_PREV_COMMIT = input.trigger.previousCommit;
  if (input.trigger.actor !== undefined) out.CODEBUILD_WEBHOOK_ACTOR_ACCOUNT_ID = input.trigger.actor;
  return out;
}

/** The variables CodeBuild itself sets; nothing the user writes can override them. */
function fixedVariables(input: CodebuildEnvInput): Record<string, string> {
  const project = projectName(input.pipeline, input.stage);
  const buildId = `${project}:${input.uuid}`;
  return {
    CODEBUILD_BUILD_ID: buildId,
    CODEBUILD_BUILD_ARN: `arn:aws:codebuild:${input.region ?? 'local'}:000000000000:build/${buildId}`,
    CODEBUILD_BUILD_NUMBER: String(input.buildNumber),
    CODEBUILD_BUILD_SUCCEEDING: '1',
    // As CodeBuild sets it for a build CodePipeline started (which a Conveyor stage is): scripts test the prefix.
    CODEBUILD_INITIATOR: `codepipeline/${input.pipeline}`,
    CODEBUILD_RESOLVED_SOURCE_VERSION: input.commit,
    // A webhook build names the commit; a manual one what was asked for (CodeBuild's sourceVersion).
    CODEBUILD_SOURCE_VERSION: input.trigger.type === 'webhook' ? input.commit : input.ref || input.commit,
    CODEBUILD_SOURCE_REPO_URL: input.repository,
    CODEBUILD_SRC_DIR: input.srcDir,
    CODEBUILD_START_TIME: String(input.startTime),
    ...webhookVariables(input),
    CONVEYOR_RUN_ID: input.runId,
    CONVEYOR_PIPELINE: input.pipeline,
    CONVEYOR_STAGE: input.stage,
  };
}

function withoutReserved(vars: Record<string, string> | undefined): Record<string, string> {
  return Object.fromEntries(Object.entries(vars ?? {}).filter(([k]) => !k.startsWith('CODEBUILD_')));
}

/**
 * The environment a buildspec sees. Precedence, lowest first: defaults (HOME, TMPDIR, AWS_REGION),
 * buildspec env.variables, the pipeline stage's variables, then the CODEBUILD_* variables, which
 * are fixed (names starting CODEBUILD_ are reserved, as on CodeBuild). Values are passed to the
 * shell as environment, never as shell text, so a branch named `$(…)` stays a string.
 */
export function codebuildEnv(input: CodebuildEnvInput): Record<string, string> {
  const defaults: Record<string, string> = { HOME: input.home };
  if (input.tmpDir !== undefined) defaults.TMPDIR = input.tmpDir;
  if (input.region !== undefined) {
    defaults.AWS_REGION = input.region;
    defaults.AWS_DEFAULT_REGION = input.region;
  }
  return {
    ...defaults,
    ...withoutReserved(input.buildspecVariables),
    ...withoutReserved(input.stageVariables),
    ...fixedVariables(input),
  };
}
