import type { Logger } from './logger.js';

export interface ShutdownStep {
  name: string;
  run: () => Promise<unknown> | unknown;
}

/**
 * Runs the steps in order once (stop HTTP → close workers → close queues → quit Redis) on SIGTERM/SIGINT.
 * A step that throws is logged and the next one still runs; a second signal exits at once.
 */
export function onShutdown(steps: ShutdownStep[], logger: Logger, exit: (code: number) => void = process.exit): () => Promise<void> {
  let running: Promise<void> | undefined;
  const shutdown = () => {
    running ??= (async () => {
      logger.info({ steps: steps.map((s) => s.name) }, 'shutting down');
      let code = 0;
      for (const step of steps) {
        try {
          await step.run();
        } catch (err) {
          code = 1;
          logger.error({ err, step: step.name }, 'shutdown step failed');
        }
      }
      logger.info({ code }, 'stopped');
      exit(code);
    })();
    return running;
  };
  const onSignal = () => {
    if (running) exit(1);
    void shutdown();
  };
  process.once('SIGTERM', onSignal);
  process.once('SIGINT', onSignal);
  // Started by the launcher, whose pipe is this stdin: a launcher that dies without stopping the service
  // (SIGKILL, a crash) closes it, and the service stops as on SIGTERM instead of running on unwatched.
  if (process.env.CONVEYOR_STOP_WITH_STDIN === '1') {
    const onClosed = () => {
      if (running) return;
      logger.warn('the launcher that started this service is gone (its stdin closed)');
      void shutdown();
    };
    process.stdin.once('end', onClosed);
    process.stdin.once('error', onClosed);
    process.stdin.resume();
  }
  return shutdown;
}
