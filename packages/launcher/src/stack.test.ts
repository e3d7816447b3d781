import { describe, expect, it } from 'vitest';
import { passedThrough } from './stack.js';

describe('passedThrough', () => {
  it("hands the services their own settings and nothing else of the caller's environment", () => {
    const settings = {
      ARTIFACT_MAX_BYTES: '1000',
      ARTIFACT_RETENTION_RUNS: '5',
      RETENTION_INTERVAL_MS: '60000',
      RUN_HISTORY_DAYS: '30',
      BUILD_UIDS: '70000-70099',
      DEPLOY_KEEP_VERSIONS: '3',
      LOG_LEVEL: 'debug',
    };
    // The launcher sets these itself, per service, or not at all.
    const others = {
      DEPLOY_DIR: '/elsewhere',
      ARTIFACT_DIR: '/elsewhere',
      CONVEYOR_API_TOKEN: 'secret',
      AWS_SECRET_ACCESS_KEY: 'secret',
      ARTIFACT_RETENTION_RUNS_EXTRA: 'x',
    };
    expect(passedThrough({ ...settings, ...others })).toEqual(settings);
  });
});
