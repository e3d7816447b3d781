/** Host variables a deployed command inherits; everything else of the deployer's environment stays out. */
export const INHERITED_VARIABLES = ['PATH', 'HOME', 'LANG'] as const;

export interface ChildEnvInput {
  host: Record<string, string | undefined>;
  /** The pipeline author's `target.env`. */
  target: Record<string, string>;
  port: number;
  runId: string;
  commit: string;
  /** The version's own random mark (CONVEYOR_DEPLOY_MARK), recorded with it: how its processes are told from others once its group's leader is gone. */
  deployMark: string;
}

/**
 * The environment of a deployed command. Run values travel only as variables, never inside the
 * command text. PORT and CONVEYOR_* come last so the target's env cannot point health checks elsewhere.
 */
export function childEnv(input: ChildEnvInput): Record<string, string> {
  const env: Record<string, string> = {};
  for (const name of INHERITED_VARIABLES) {
    const value = input.host[name];
    if (value !== undefined) env[name] = value;
  }
  return {
    ...env,
    ...input.target,
    PORT: String(input.port),
    CONVEYOR_RUN_ID: input.runId,
    CONVEYOR_COMMIT: input.commit,
    CONVEYOR_DEPLOY_MARK: input.deployMark,
  };
}
