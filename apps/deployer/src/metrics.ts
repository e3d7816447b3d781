import { Counter, type Registry } from 'prom-client';

export type DeployResult = 'deployed' | 'already-deployed' | 'superseded' | 'unhealthy' | 'cancelled' | 'error';

export function deployCounter(registry: Registry): Counter<'pipeline' | 'result'> {
  return new Counter({
    name: 'conveyor_deploys_total',
    help: 'Deploy jobs handled, by pipeline and result',
    labelNames: ['pipeline', 'result'],
    registers: [registry],
  });
}
