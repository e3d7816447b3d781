import { describe, expect, it } from 'vitest';
import { childEnv } from './child-env.js';

describe('childEnv', () => {
  const MARK = '0f0e0d0c-0b0a-4909-8807-060504030201';
  const base = { port: 4100, runId: 'run-00000001', commit: 'abc123', deployMark: MARK };

  it('inherits only PATH, HOME and LANG from the host', () => {
    const env = childEnv({ ...base, host: { PATH: '/bin', HOME: '/home/u', LANG: 'C.UTF-8', REDIS_URL: 'redis://x', CONVEYOR_API_TOKEN: 'secret' }, target: {} });
    expect(env).toEqual({ PATH: '/bin', HOME: '/home/u', LANG: 'C.UTF-8', PORT: '4100', CONVEYOR_RUN_ID: 'run-00000001', CONVEYOR_COMMIT: 'abc123', CONVEYOR_DEPLOY_MARK: MARK });
  });

  it('adds the target env, which may override inherited variables but not PORT or CONVEYOR_*', () => {
    const env = childEnv({ ...base, host: { PATH: '/bin' }, target: { PATH: '/opt/bin', GREETING: 'hi', PORT: '1', CONVEYOR_RUN_ID: 'forged', CONVEYOR_DEPLOY_MARK: 'forged' } });
    expect(env.PATH).toBe('/opt/bin');
    expect(env.GREETING).toBe('hi');
    expect(env.PORT).toBe('4100');
    expect(env.CONVEYOR_RUN_ID).toBe('run-00000001');
    expect(env.CONVEYOR_DEPLOY_MARK).toBe(MARK);
  });

  it('omits host variables that are not set', () => {
    expect(Object.keys(childEnv({ ...base, host: {}, target: {} })).sort()).toEqual(['CONVEYOR_COMMIT', 'CONVEYOR_DEPLOY_MARK', 'CONVEYOR_RUN_ID', 'PORT']);
  });
});
