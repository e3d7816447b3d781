import type { Counter } from 'prom-client';
import { cancelledJobKey, liveDeploymentKey } from '@conveyor/contracts';
import { openStageLog, PermanentJobError, redeliveryNote, RUN_CANCELLED, SHUTTING_DOWN, type Redis, type StageHandler } from '@conveyor/service-kit';
import type { DeployResult } from '../metrics.js';
import type { DeployTarget } from '../ports.js';

export interface DeployHandlerDeps {
  targets: readonly DeployTarget[];
  redis: Redis;
  prefix: string;
  deploys: Counter<'pipeline' | 'result'>;
}

/** Handles a DeployJob: picks the target for its kind, writes the stage log, maps the outcome to a StageOutcome. */
export function createDeployHandler(deps: DeployHandlerDeps): StageHandler<'deploy'> {
  return async (job, ctx) => {
    const target = deps.targets.find((t) => t.kind === job.target.kind);
    if (!target) throw new PermanentJobError(`this deployer has no target of kind "${job.target.kind}"`);
    const log = openStageLog(deps.redis, deps.prefix, job.jobId);
    const again = redeliveryNote(ctx);
    if (again) log.write(again);
    const count = (result: DeployResult) => deps.deploys.inc({ pipeline: job.pipeline, result });
    try {
      const outcome = await target.deploy(job, {
        log: (line) => log.write(`${line}\n`),
        signal: ctx.signal,
        cancelled: async () => ctx.signal.reason === RUN_CANCELLED || (await deps.redis.exists(cancelledJobKey(deps.prefix, job.jobId))) === 1,
        // Failing, the deploy is retried: the new version is recorded live (current.json), so the retry finds it serving.
        wentLive: async (live) => void (await deps.redis.set(liveDeploymentKey(deps.prefix, job.pipeline), JSON.stringify(live))),
      });
      count(outcome.status);
      switch (outcome.status) {
        case 'deployed':
        case 'already-deployed':
          return { status: 'SUCCEEDED', message: `deployed at ${outcome.url}`, output: { url: outcome.url } };
        case 'superseded': {
          // SUCCEEDED, as a Monitor stage ends on a version replaced under it: this version was deployed and
          // served; a later run's replaced it, as runs of one pipeline do (the last to go live serves).
          // FAILED would fail a run whose deploy worked, for the deployer's own late re-delivery.
          const message = `superseded: run ${outcome.by.runId}'s version went live after this one (${outcome.by.url} serves); nothing was started or stopped`;
          log.write(`${message}\n`);
          return { status: 'SUCCEEDED', message, output: { url: outcome.url, supersededBy: outcome.by } };
        }
        case 'unhealthy':
          log.write(`deploy failed: ${outcome.message}\n`);
          return { status: 'FAILED', message: outcome.message };
        case 'cancelled':
          log.write(`deploy stopped: ${outcome.message}\n`);
          return { status: 'FAILED', message: outcome.message };
        default: {
          const never: never = outcome;
          throw new Error(`unknown deploy outcome ${JSON.stringify(never)}`);
        }
      }
    } catch (err) {
      count('error');
      // Stopped from outside: said as such, not as an error of the deploy.
      if (ctx.signal.reason === RUN_CANCELLED) log.write('deploy stopped: the run was cancelled; what it had started was stopped\n');
      else if (ctx.signal.reason === SHUTTING_DOWN) log.write('deploy interrupted: this deployer is shutting down; the job goes back to its queue\n');
      else log.write(`deploy errored: ${err instanceof Error ? err.message : String(err)}\n`);
      throw err;
    } finally {
      await log.close();
    }
  };
}
