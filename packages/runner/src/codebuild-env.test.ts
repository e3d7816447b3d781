import { describe, expect, it } from 'vitest';
import { codebuildEnv, webhookTrigger, type CodebuildEnvInput } from './codebuild-env.js';

const COMMIT = '0123456789abcdef0123456789abcdef01234567';
const base: CodebuildEnvInput = {
  runId: 'run-0000abcd',
  pipeline: 'shop',
  stage: 'Build',
  buildNumber: 42,
  commit: COMMIT,
  repository: 'https://git.example.com/shop.git',
  ref: 'refs/heads/main',
  trigger: { type: 'webhook', actor: 'octocat', previousCommit: 'f'.repeat(40) },
  srcDir: '/work/run-0000abcd/src',
  home: '/work/run-0000abcd/home',
  startTime: 1_700_000_000_123,
  uuid: '9b2f5c1e-0000-4000-8000-000000000000',
};

describe('codebuildEnv', () => {
  it('sets the variables a buildspec reads', () => {
    const env = codebuildEnv(base);
    expect(env).toMatchObject({
      CODEBUILD_SRC_DIR: '/work/run-0000abcd/src',
      CODEBUILD_RESOLVED_SOURCE_VERSION: COMMIT,
      CODEBUILD_SOURCE_VERSION: COMMIT,
      CODEBUILD_SOURCE_REPO_URL: 'https://git.example.com/shop.git',
      CODEBUILD_BUILD_ID: 'shop-Build:9b2f5c1e-0000-4000-8000-000000000000',
      CODEBUILD_BUILD_ARN: 'arn:aws:codebuild:local:000000000000:build/shop-Build:9b2f5c1e-0000-4000-8000-000000000000',
      CODEBUILD_BUILD_NUMBER: '42',
      CODEBUILD_BUILD_SUCCEEDING: '1',
      CODEBUILD_INITIATOR: 'codepipeline/shop',
      CODEBUILD_START_TIME: '1700000000123',
      CODEBUILD_WEBHOOK_EVENT: 'PUSH',
      CODEBUILD_WEBHOOK_HEAD_REF: 'refs/heads/main',
      CODEBUILD_WEBHOOK_TRIGGER: 'branch/main',
      CODEBUILD_WEBHOOK_PREV_COMMIT: 'f'.repeat(40),
      CODEBUILD_WEBHOOK_ACTOR_ACCOUNT_ID: 'octocat',
      HOME: '/work/run-0000abcd/home',
    });
    expect(env.AWS_REGION).toBeUndefined();
  });

  it('sets no webhook variables for a manual run, and names the requested ref as the source version', () => {
    const env = codebuildEnv({ ...base, trigger: { type: 'manual' } });
    expect(Object.keys(env).filter((k) => k.startsWith('CODEBUILD_WEBHOOK_'))).toEqual([]);
    expect(env.CODEBUILD_SOURCE_VERSION).toBe('refs/heads/main');
  });

  it('spells tag triggers tag/<name> and uses the region when given', () => {
    const env = codebuildEnv({ ...base, ref: 'refs/tags/v1.2.0', region: 'eu-west-1' });
    expect(env.CODEBUILD_WEBHOOK_TRIGGER).toBe('tag/v1.2.0');
    expect(env.AWS_REGION).toBe('eu-west-1');
    expect(env.CODEBUILD_BUILD_ARN).toMatch(/^arn:aws:codebuild:eu-west-1:/);
    expect(webhookTrigger('refs/pull/1/head')).toBeUndefined();
  });

  it('lets stage variables override the buildspec, and neither override CODEBUILD_*', () => {
    const env = codebuildEnv({
      ...base,
      buildspecVariables: { A: 'spec', B: 'spec', CODEBUILD_BUILD_NUMBER: '999', HOME: '/spec-home', CODEBUILD_OTHER: 'x' },
      stageVariables: { B: 'stage', CODEBUILD_SRC_DIR: '/evil' },
    });
    expect(env).toMatchObject({ A: 'spec', B: 'stage', CODEBUILD_BUILD_NUMBER: '42', CODEBUILD_SRC_DIR: '/work/run-0000abcd/src', HOME: '/spec-home' });
    expect(env.CODEBUILD_OTHER).toBeUndefined();
  });

  it('is pure: the same input gives the same output', () => {
    expect(codebuildEnv(base)).toEqual(codebuildEnv(structuredClone(base)));
  });
});
