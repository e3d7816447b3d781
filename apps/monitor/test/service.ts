import { fileURLToPath } from 'node:url';
import { startServiceProcess, type RunningService } from '@conveyor/testing';

export type { RunningService } from '@conveyor/testing';

const APP_DIR = fileURLToPath(new URL('..', import.meta.url));

/** This app's real entry point, as a child process. */
export const startService = (env: Record<string, string>): Promise<RunningService> => startServiceProcess(APP_DIR, env);
