import { existsSync, readFileSync } from 'node:fs';
import { mkdir, readdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import type { RunPhasesOptions } from './bash-session.js';
import { isRunning, runYaml, useWorkspace } from './bash-session.testkit.js';
import { codebuildEnv } from './codebuild-env.js';

const dirs = useWorkspace();
const run = (yaml: string, opts: Partial<RunPhasesOptions> = {}) => runYaml(dirs().ws, yaml, opts);

describe('runPhases: one shell for the whole build', () => {
  it('keeps variables and the working directory across commands and phases', async () => {
    const r = await run(`version: 0.2
phases:
  install:
    commands:
      - export X=1
      - Y=two
      - mkdir -p sub && cd sub
  build:
    commands:
      - echo "X=$X Y=$Y dir=$(basename "$PWD")"
      - touch made-here
`);
    expect(r.status).toBe('SUCCEEDED');
    expect(r.output).toContain('X=1 Y=two dir=sub');
    expect(existsSync(join(dirs().ws, 'sub', 'made-here'))).toBe(true);
  });

  it('starts its shell in the workspace: a relative BASH_ENV there is read, and leaves the positional parameters as they were', async () => {
    await mkdir(join(dirs().ws, 'ci'), { recursive: true });
    await (await import('node:fs/promises')).writeFile(join(dirs().ws, 'ci', 'env.sh'), 'export FROM_ENV=yes\n');
    // The build's environment (runBuildspecJob puts env.variables in it).
    const r = await run(
      `version: 0.2
phases:
  build:
    commands:
      - echo "from-env=$FROM_ENV args=$# dir=$PWD"
`,
      { env: { PATH: process.env.PATH ?? '/usr/bin:/bin', BASH_ENV: 'ci/env.sh' } },
    );
    expect(r.status).toBe('SUCCEEDED');
    expect(r.output).toContain(`from-env=yes args=0 dir=${dirs().ws}`);
  });

  it('captures stdout and stderr, in order, per command', async () => {
    const r = await run(`version: 0.2
phases:
  build:
    commands:
      - echo out-1
      - echo err-1 >&2
      - echo out-2
`);
    expect(r.output).toBe('out-1\nerr-1\nout-2\n');
  });

  it('runs multi-line commands as one command', async () => {
    const r = await run(`version: 0.2
phases:
  build:
    commands:
      - |
        for i in 1 2 3; do
          printf "%s" "$i"
        done
        echo
`);
    expect(r.output).toBe('123\n');
  });

  it('gives commands no stdin and no access to the control pipes', async () => {
    const r = await run(`version: 0.2
phases:
  build:
    commands:
      - cat
      - read -r line || echo "stdin is empty"
      - read -r -u 3 stolen 2>/dev/null; echo "fd3 read status $?"
      - echo forged >&4 2>/dev/null; echo "fd4 write status $?"
      - echo still-running
`);
    expect(r.status).toBe('SUCCEEDED');
    expect(r.output).toContain('stdin is empty');
    expect(r.output).toMatch(/fd3 read status [1-9]/);
    expect(r.output).toMatch(/fd4 write status [1-9]/);
    expect(r.output).toContain('still-running');
  });

  it('a write to a saved copy of the status pipe cannot turn a failure into a success', async () => {
    const r = await run(`version: 0.2
phases:
  build:
    commands:
      - for fd in 10 11 12 13 14 15; do echo 0 >&$fd; done 2>/dev/null; true
      - "false"
      - echo after
`);
    expect(r.status).toBe('FAILED');
    expect(r.output).not.toContain('after\n');
  });

  it('stops a daemon the build left running outside its process group', async () => {
    const r = await run(`version: 0.2
phases:
  build:
    commands:
      - setsid sleep 300 > /dev/null 2>&1 < /dev/null & echo $! > daemon.pid
`);
    expect(r.status).toBe('SUCCEEDED');
    const pid = Number(readFileSync(join(dirs().ws, 'daemon.pid'), 'utf8'));
    expect(pid).toBeGreaterThan(1);
    expect(isRunning(pid)).toBe(false);
  });

  it('passes only the given environment (plus PATH, HOME, LANG)', async () => {
    process.env.CV_RUNNER_TEST_LEAK = 'leaked';
    try {
      const r = await run('version: 0.2\nphases:\n  build:\n    commands:\n      - echo "leak=${CV_RUNNER_TEST_LEAK:-none} given=$GIVEN path=${PATH:+set}"\n', { env: { GIVEN: 'yes' } });
      expect(r.output).toBe('leak=none given=yes path=set\n');
    } finally {
      delete process.env.CV_RUNNER_TEST_LEAK;
    }
  });

  it('never executes a hostile branch name passed as a variable', async () => {
    const marker = join(dirs().root, 'pwned');
    const env = codebuildEnv({
      runId: 'run-00000001', pipeline: 'demo', stage: 'Build', buildNumber: 1, commit: 'a'.repeat(40), repository: 'file:///repo',
      ref: `refs/heads/$(touch ${marker})`, trigger: { type: 'webhook' }, srcDir: dirs().ws, home: dirs().root, startTime: 0, uuid: 'u',
    });
    const r = await run('version: 0.2\nphases:\n  build:\n    commands:\n      - echo "$CODEBUILD_WEBHOOK_TRIGGER"\n      - echo $CODEBUILD_WEBHOOK_HEAD_REF\n', { env });
    expect(r.status).toBe('SUCCEEDED');
    expect(r.output).toContain(`branch/$(touch ${marker})`);
    expect(existsSync(marker)).toBe(false);
  });

  it('keeps its control files outside the workspace and removes them afterwards', async () => {
    const r = await run('version: 0.2\nphases:\n  build:\n    commands:\n      - cat ../ws.ctl/shell-0.json; echo\n      - ls -A; echo end\n');
    const record = JSON.parse(r.output.split('\n')[0]!) as { pid: number; pgid: number; ownerPid: number };
    expect(record.ownerPid).toBe(process.pid);
    expect(record.pgid).toBe(record.pid);
    expect(r.output.split('\n')[1]).toBe('end');
    expect(await readdir(dirs().root)).toEqual(['ws']);
  });

  it('refuses to share a control directory', async () => {
    await mkdir(join(dirs().root, 'ws.ctl'));
    await expect(run('version: 0.2\nphases:\n  build:\n    commands: [echo hi]\n')).rejects.toThrow(/already exists/);
  });

  it('starts the shell by absolute path from a directory of its own, then in the workspace: $0, $#, $PWD and OLDPWD as a shell started there has them', async () => {
    for (const shell of ['bash', '/bin/sh']) {
      const r = await run(`version: 0.2\nenv:\n  shell: ${shell}\nphases:\n  build:\n    commands:\n      - 'echo "$0 $# $PWD $(pwd -P) \${OLDPWD-unset}"'\n`, { env: { PATH: '$HOME/.local/bin:$PATH' } });
      expect(r.status, r.output).toBe('SUCCEEDED');
      expect(r.output).toBe(`${shell} 0 ${dirs().ws} ${dirs().ws} unset\n`);
    }
  });

  it('a shell that cannot be started (the build removed its control directory, as the service\'s user may) fails the command that needed it, saying why: no exception', async () => {
    const r = await run('version: 0.2\nphases:\n  build:\n    commands:\n      - rm -rf "$PWD.ctl"; exit 3\n    finally:\n      - echo finally-ran\n  post_build:\n    commands:\n      - echo post-ran\n');
    expect(r.status).toBe('FAILED');
    expect(r.statuses).toEqual({ build: 'FAILED', post_build: 'FAILED' });
    expect(r.message).toBe('phases.build.commands[0] exited the shell with code 3: rm -rf "$PWD.ctl"; exit 3');
    expect(r.phases[1]?.message).toMatch(/^phases\.post_build\.commands\[0\] did not run, as the build shell could not be started \(its control directory \S+\.ctl was removed or changed \(by the build\?\): .*\): echo post-ran$/);
    expect(r.output).toMatch(/^\[conveyor\] the build shell could not be started: its control directory \S+ was removed or changed/m);
    expect(r.output).not.toMatch(/^(finally|post)-ran$/m);
  });

  it('runs /bin/sh when env.shell asks for it', async () => {
    const r = await run('version: 0.2\nenv:\n  shell: /bin/sh\n  exported-variables: [V]\nphases:\n  build:\n    commands:\n      - V=from-sh\n      - echo "bash=${BASH_VERSION:-none} V=$V"\n');
    expect(r.output).toBe('bash=none V=from-sh\n');
    expect(r.exportedVariables).toEqual({ V: 'from-sh' });
  });
});

describe('runPhases: a command runs as plain shell text would', () => {
  it('break and continue cannot leave the user\'s command (they act on its own loops only)', async () => {
    const r = await run(`version: 0.2
phases:
  build:
    commands:
      - export VERSION=1.2.3
      - |
        for a in 1 2 3; do if true; then break 2; fi; done
        echo "after loop"
      - for a in 1 2; do break 5; done; echo "after break 5"
      - for a in 1 2; do continue 2; echo never; done; echo "after continue 2"
  post_build:
    commands:
      - echo "post VERSION=$VERSION"
`, { timeoutMs: 3000 });
    expect(r.status).toBe('SUCCEEDED');
    expect(r.output).toBe('after loop\nafter break 5\nafter continue 2\npost VERSION=1.2.3\n');
  });

  it('break or continue at the top level of a command does not end it, nor hang the build', async () => {
    const events: string[] = [];
    const r = await run(`version: 0.2
phases:
  build:
    commands:
      - |
        X=kept
        continue
        echo "after continue"
      - break; echo "after break X=$X"
`, { timeoutMs: 3000, onEvent: (e) => e.type === 'notice' && events.push(e.message) });
    expect(r.status).toBe('SUCCEEDED');
    expect(r.output).toMatch(/after continue\n/);
    expect(r.output).toMatch(/after break X=kept\n$/);
    expect(events).toEqual([]);
  });

  it('return at the top level of a command ends that command with its status', async () => {
    const r = await run(`version: 0.2
phases:
  build:
    commands:
      - echo one; return 0; echo never
      - Y=two
      - echo "Y=$Y"; return 4; echo never
      - echo skipped
`);
    expect(r.output).toBe('one\nY=two\n');
    expect(r.failure).toMatchObject({ phase: 'build', index: 2, exitCode: 4 });
    expect(r.message).toMatch(/^phases\.build\.commands\[2\] exited with code 4/);
  });

  it('keeps declared variables, arrays, functions, positional parameters, traps and options across commands', async () => {
    const r = await run(`version: 0.2
phases:
  build:
    commands:
      - declare -A MAP=([k]=v); declare -a LIST=(a b); typeset T=t; declare -x DX=dx
      - greet() { echo "hello $1"; }; set -- p1 p2; mkdir -p sub && cd sub
      - trap 'echo "ERR trapped"' ERR; set -u
      - echo "map=\${MAP[k]} list=\${LIST[1]} t=$T dx=$(printenv DX) args=$# $1 dir=$(basename "$PWD") opts=$-"
      - greet world; false; echo "after false"
`);
    expect(r.status).toBe('SUCCEEDED');
    expect(r.output).toMatch(/^map=v list=b t=t dx=dx args=2 p1 dir=sub opts=\S*u\S*\nhello world\nERR trapped\nafter false\n$/);
  });

  it("a trap that reads stdin (ERR, DEBUG) reads nothing of the runner's: the build goes on", async () => {
    const r = await run(`version: 0.2
phases:
  build:
    commands:
      - trap 'cat >/dev/null; echo "err trap ran"' ERR
      - "false"
  post_build:
    commands:
      - trap - ERR; trap 'read -r x || true' DEBUG; echo "post ran"
`, { timeoutMs: 5000 });
    expect(r.status).toBe('FAILED');
    expect(r.output).toContain('err trap ran');
    expect(r.output).toContain('post ran');
  });

  it('a command that leaves the shell unable to go on does not make the next one pass unrun: that one runs in a fresh shell', async () => {
    const r = await run(`version: 0.2
phases:
  build:
    commands:
      - enable -n read
      - echo SHOULD-RUN; false
      - echo never
`, { timeoutMs: 5000 });
    expect(r.output).toContain('SHOULD-RUN');
    expect(r.output).not.toContain('never');
    expect(r.status).toBe('FAILED');
  });

  it('/bin/sh: break and continue cannot leave the command either', async () => {
    const r = await run(`version: 0.2
env:
  shell: /bin/sh
phases:
  build:
    commands:
      - V=kept; for a in 1 2; do break 3; done; echo "after break"
      - continue; echo "after continue V=$V"
`, { timeoutMs: 3000 });
    expect(r.status).toBe('SUCCEEDED');
    expect(r.output).toBe('after break\nafter continue V=kept\n');
  });

  it('set -v echoes the user\'s commands, not the runner\'s plumbing', async () => {
    const r = await run('version: 0.2\nphases:\n  build:\n    commands: [set -v, echo hi, set +v, echo quiet]\n');
    expect(r.output).toBe('echo hi\nhi\nset +v\nquiet\n');
  });

  it('writes stdout and stderr to the log in the order the build wrote them, as one stream', async () => {
    const r = await run(`version: 0.2
phases:
  build:
    commands:
      - for i in $(seq 2000); do echo out$i; echo err$i >&2; done
`);
    const expected = Array.from({ length: 2000 }, (_, i) => `out${i + 1}\nerr${i + 1}\n`).join('');
    expect(r.output).toBe(expected);
  });
});

describe('runPhases: failures and phase transitions', () => {
  it('skips the rest of a phase after a failing command, runs finally, fails the phase', async () => {
    const r = await run(`version: 0.2
phases:
  build:
    commands:
      - echo one
      - exit_code_7() { return 7; }; exit_code_7
      - echo never
    finally:
      - echo cleanup
`);
    expect(r.status).toBe('FAILED');
    expect(r.output).toBe('one\ncleanup\n');
    expect(r.failure).toMatchObject({ phase: 'build', block: 'commands', index: 1, exitCode: 7 });
    expect(r.message).toMatch(/^phases\.build\.commands\[1\] exited with code 7/);
  });

  it('fails the phase when only finally fails', async () => {
    const r = await run('version: 0.2\nphases:\n  build:\n    commands: [echo ok]\n    finally: ["false", echo skipped]\n');
    expect(r.statuses).toEqual({ build: 'FAILED' });
    expect(r.failure).toMatchObject({ block: 'finally', index: 0, exitCode: 1 });
    expect(r.output).toBe('ok\n');
  });

  it('runs post_build after a failed build, with CODEBUILD_BUILD_SUCCEEDING=0', async () => {
    const r = await run(`version: 0.2
phases:
  pre_build:
    commands: ['echo "pre=$CODEBUILD_BUILD_SUCCEEDING"']
  build:
    commands: ['echo "build=$CODEBUILD_BUILD_SUCCEEDING"', 'false']
  post_build:
    commands: ['echo "post=$CODEBUILD_BUILD_SUCCEEDING"']
`, { env: { CODEBUILD_BUILD_SUCCEEDING: '1' } });
    expect(r.statuses).toEqual({ pre_build: 'SUCCEEDED', build: 'FAILED', post_build: 'SUCCEEDED' });
    expect(r.output).toBe('pre=1\nbuild=1\npost=0\n');
    expect(r.status).toBe('FAILED');
  });

  it('sets CODEBUILD_BUILD_SUCCEEDING=0 for finally once a command of its phase has failed', async () => {
    const r = await run(`version: 0.2
phases:
  install:
    on-failure: CONTINUE
    commands: ['echo "install=$CODEBUILD_BUILD_SUCCEEDING"', 'false']
    finally: ['echo "install finally=$CODEBUILD_BUILD_SUCCEEDING"']
  build:
    commands: ['echo "build=$CODEBUILD_BUILD_SUCCEEDING"']
`, { env: { CODEBUILD_BUILD_SUCCEEDING: '1' } });
    expect(r.output).toBe('install=1\ninstall finally=0\nbuild=0\n');
    const shellDied = await run('version: 0.2\nphases:\n  build:\n    commands: ["exit 2"]\n    finally: [\'echo "finally=$CODEBUILD_BUILD_SUCCEEDING"\']\n', { env: { CODEBUILD_BUILD_SUCCEEDING: '1' } });
    expect(shellDied.output).toBe('finally=0\n');
  });

  it('RETRY: CODEBUILD_BUILD_SUCCEEDING stays 1 while a retry may still succeed, and is 0 on the last attempt', async () => {
    const r = await run(`version: 0.2
phases:
  build:
    on-failure: RETRY-1
    commands: ['false']
    finally: ['echo "finally=$CODEBUILD_BUILD_SUCCEEDING"']
`, { env: { CODEBUILD_BUILD_SUCCEEDING: '1' } });
    expect(r.output).toBe('finally=1\nfinally=0\n');
    expect(r.status).toBe('FAILED');
  });

  it('skips every later phase after a failed install', async () => {
    const r = await run('version: 0.2\nphases:\n  install:\n    commands: ["false"]\n  pre_build:\n    commands: [echo pre]\n  build:\n    commands: [echo build]\n  post_build:\n    commands: [echo post]\n');
    expect(r.statuses).toEqual({ install: 'FAILED', pre_build: 'SKIPPED', build: 'SKIPPED', post_build: 'SKIPPED' });
    expect(r.output).toBe('');
  });

  it('skips build and post_build after a failed pre_build', async () => {
    const r = await run('version: 0.2\nphases:\n  pre_build:\n    commands: ["false"]\n  build:\n    commands: [echo build]\n  post_build:\n    commands: [echo post]\n');
    expect(r.statuses).toEqual({ pre_build: 'FAILED', build: 'SKIPPED', post_build: 'SKIPPED' });
  });

  it('on-failure CONTINUE runs the next phases but the build still fails', async () => {
    const r = await run('version: 0.2\nphases:\n  install:\n    on-failure: CONTINUE\n    commands: ["false"]\n  build:\n    commands: [\'echo "build ran, succeeding=$CODEBUILD_BUILD_SUCCEEDING"\']\n');
    expect(r.statuses).toEqual({ install: 'FAILED', build: 'SUCCEEDED' });
    expect(r.output).toBe('build ran, succeeding=0\n');
    expect(r.status).toBe('FAILED');
    expect(r.failure?.phase).toBe('install');
  });

  it('on-failure ABORT on build skips post_build', async () => {
    const r = await run('version: 0.2\nphases:\n  build:\n    on-failure: ABORT\n    commands: ["false"]\n  post_build:\n    commands: [echo post]\n');
    expect(r.statuses).toEqual({ build: 'FAILED', post_build: 'SKIPPED' });
  });

  const flaky = (policy: string) => `version: 0.2
phases:
  build:
    on-failure: ${policy}
    commands:
      - n=$(cat count 2>/dev/null || echo 0); n=$((n+1)); echo $n > count; echo "attempt $n"
      - '[ "$n" -ge 3 ]'
`;

  it('RETRY-2 re-runs a failing phase until it passes', async () => {
    const r = await run(flaky('RETRY-2'));
    expect(r.status).toBe('SUCCEEDED');
    expect(r.output).toBe('attempt 1\nattempt 2\nattempt 3\n');
  });

  it('RETRY-1 gives up after one retry', async () => {
    const r = await run(flaky('RETRY-1'));
    expect(r.status).toBe('FAILED');
    expect(r.output).toBe('attempt 1\nattempt 2\n');
    expect(r.phases[0]?.message).toMatch(/after 2 attempts/);
  });

  it('RETRY-<count>-<regex> retries only when the phase output matches', async () => {
    expect((await run(flaky('RETRY-5-attempt [12]$'))).output).toBe('attempt 1\nattempt 2\nattempt 3\n');
    await rm(join(dirs().ws, 'count'));
    expect((await run(flaky('RETRY-5-connection reset'))).output).toBe('attempt 1\n');
  });

  it('treats `exit 3` as a failed command and starts a fresh shell for what must still run', async () => {
    const r = await run(`version: 0.2
phases:
  build:
    commands:
      - export KEPT=yes
      - exit 3
    finally:
      - echo "finally KEPT=\${KEPT:-lost}"
  post_build:
    commands:
      - echo "post ran"
`);
    expect(r.failure).toMatchObject({ phase: 'build', index: 1, exitCode: 3 });
    expect(r.message).toMatch(/exited the shell with code 3/);
    expect(r.output).toBe('finally KEPT=lost\npost ran\n');
    expect(r.statuses).toEqual({ build: 'FAILED', post_build: 'SUCCEEDED' });
  });
  it('traces the user\'s commands under set -x, not the runner\'s loop', async () => {
    const r = await run('version: 0.2\nphases:\n  build:\n    commands: [set -x, echo traced]\n');
    expect(r.output).toMatch(/^\+ command \. \S+-cmd\.sh\n\+\+ echo traced\ntraced\n$/);
  });

  it('fails the command that trips set -e and goes on in a fresh shell', async () => {
    const r = await run('version: 0.2\nphases:\n  build:\n    commands: [set -e, "false", echo never]\n  post_build:\n    commands: [echo post]\n');
    expect(r.failure).toMatchObject({ index: 1, exitCode: 1 });
    expect(r.output).toBe('post\n');
  });
});

describe('runPhases: exported variables', () => {
  it('captures env.exported-variables as they stand at the end of post_build', async () => {
    const r = await run(`version: 0.2
env:
  exported-variables: [IMAGE_TAG, FROM_ENV, MULTI, UNSET_ONE, AWS_KEY]
phases:
  build:
    commands:
      - IMAGE_TAG=v1
      - MULTI="$(printf 'line 1\\nline 2')"
      - AWS_KEY=x
  post_build:
    commands:
      - IMAGE_TAG="$IMAGE_TAG-final"
`, { env: { FROM_ENV: 'given' } });
    expect(r.exportedVariables).toEqual({ IMAGE_TAG: 'v1-final', FROM_ENV: 'given', MULTI: 'line 1\nline 2' });
  });
});
