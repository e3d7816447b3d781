import { DeployJob, stageJobId } from '@conveyor/contracts';

export type LocalTarget = Partial<Extract<DeployJob['target'], { kind: 'local' }>>;

/** A deploy job of `pipeline` for its artifact `input`, as the orchestrator builds one: `node server.mjs` unless `target` says otherwise. */
export function localDeployJob(job: { runId: string; runNumber?: number; pipeline: string; input: DeployJob['input']; target?: LocalTarget }): DeployJob {
  return DeployJob.parse({
    v: 1,
    type: 'deploy',
    jobId: stageJobId(job.runId, 'Deploy', 1),
    runId: job.runId,
    runNumber: job.runNumber ?? 1,
    pipeline: job.pipeline,
    stage: 'Deploy',
    stageIndex: 2,
    attempt: 1,
    trigger: { type: 'manual', ref: 'refs/heads/main' },
    commit: 'c'.repeat(40),
    input: job.input,
    target: { kind: 'local', command: 'node server.mjs', ...job.target },
  });
}
