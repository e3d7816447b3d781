import { collectDefaultMetrics, Registry } from 'prom-client';

/** A registry per service (not the global one), so tests can build several services in one process. */
export function createRegistry(service: string): Registry {
  const registry = new Registry();
  registry.setDefaultLabels({ service });
  collectDefaultMetrics({ register: registry, prefix: 'conveyor_' });
  return registry;
}
export type { Registry } from 'prom-client';
