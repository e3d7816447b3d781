import { chmod, chown, mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { resolveBuildUser } from './buildspec-job.js';
import { runYaml, useWorkspace } from './bash-session.testkit.js';

const isRoot = process.getuid?.() === 0;
const NOBODY = { uid: 65534, gid: 65534 };

describe('builds run as another user', () => {
  const dirs = useWorkspace();

  it.runIf(isRoot)('a build as nobody cannot read the worker\'s environment', async () => {
    const { root, ws } = dirs();
    await chmod(root, 0o755); // mkdtemp makes it 0700: nobody could not even enter the workspace
    await chown(ws, NOBODY.uid, NOBODY.gid);
    const run = await runYaml(
      ws,
      `version: 0.2
env:
  exported-variables: [WHO]
phases:
  build:
    commands:
      - WHO=$(id -u)
      - cat /proc/$PPID/environ > stolen.txt
`,
      { user: NOBODY, env: { PATH: process.env.PATH ?? '/usr/bin:/bin' } },
    );
    expect(run.exportedVariables.WHO).toBe('65534');
    expect(run.status).toBe('FAILED');
    expect(run.output).toMatch(/Permission denied/);
  });

  it.runIf(isRoot)('a root worker defaults to nobody, unless the work directory is out of its reach', async () => {
    const { root } = dirs();
    await chmod(root, 0o755);
    expect(await resolveBuildUser(join(root, 'work'))).toEqual({ user: NOBODY });
    const locked = join(root, 'locked');
    await mkdir(locked, { mode: 0o700 });
    const refused = await resolveBuildUser(join(locked, 'work'));
    expect(refused.user).toBeUndefined();
    expect(refused.warning).toContain(locked);
    // Asked for by BUILD_UID, the same refusal stops the service instead of falling back.
    await expect(resolveBuildUser(join(locked, 'work'), 1234)).rejects.toThrow(/BUILD_UID=1234 cannot be used: user 1234 cannot reach/);
  });

  it.runIf(!isRoot)('a worker that is not root says builds run as itself', async () => {
    const { root } = dirs();
    expect((await resolveBuildUser(join(root, 'work'))).warning).toMatch(/own user/);
    await expect(resolveBuildUser(join(root, 'work'), 1234)).rejects.toThrow(/needs the service to run as root/);
  });
});
