import { chmod, chown, readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { beforeEach, describe, expect, it } from 'vitest';
import { runYaml, useWorkspace } from './bash-session.testkit.js';

const isRoot = process.getuid?.() === 0;
const NOBODY = { uid: 65534, gid: 65534 };

/*
 * A build running as another user attacks the files root keeps for it in the control directory
 * (`<ws>.ctl`, whose path it can tell; it is in CTL here): the names are predictable, so it plants
 * symlinks or FIFOs where root will write or read next.
 */
describe.runIf(isRoot)('control files, for a build running as another user', () => {
  const dirs = useWorkspace();
  /** A root file the build must not be able to have root overwrite. */
  const victim = () => join(dirs().root, 'victim');
  /** A root-only file, NUL-separated as /proc/<pid>/environ is, that must not reach the exported variables. */
  const secret = () => join(dirs().root, 'secret');
  const env = () => ({ CTL: `${dirs().ws}.ctl`, VICTIM: victim(), SECRET: secret() });

  beforeEach(async () => {
    const { root, ws } = dirs();
    await chmod(root, 0o755); // mkdtemp makes it 0700: the build's user could not reach its workspace
    await chown(ws, NOBODY.uid, NOBODY.gid);
    await writeFile(victim(), 'original\n', { mode: 0o644 });
    await writeFile(secret(), 'STOLEN\0top-secret\0', { mode: 0o600 });
  });

  async function victimUntouched(): Promise<void> {
    expect(await readFile(victim(), 'utf8')).toBe('original\n');
    expect((await stat(victim())).uid).toBe(0);
  }

  it('root does not write through symlinks the build plants at the next control files\' names', async () => {
    const r = await runYaml(
      dirs().ws,
      `version: 0.2
env:
  exported-variables: [V]
phases:
  build:
    commands:
      - |
        for i in $(seq 1 20); do
          n=$(printf %05d "$i")
          for f in cmd.sh export.query.sh export.query.in export.query.out; do ln -s "$VICTIM" "$CTL/$n-$f"; done
        done
        for f in succeeding-0.sh shell-1.json shell-2.json; do ln -s "$VICTIM" "$CTL/$f"; done
        true
      - exit 3
  post_build:
    commands:
      - V="post_build ran in a fresh shell"
`,
      { user: NOBODY, env: env() },
    );
    await victimUntouched();
    expect(r.output).toMatch(/Permission denied/);
    // The shell that `exit 3` ended was replaced (a new shell record), post_build ran, and its variable was read back.
    expect(r.statuses).toEqual({ build: 'FAILED', post_build: 'SUCCEEDED' });
    expect(r.exportedVariables).toEqual({ V: 'post_build ran in a fresh shell' });
  });

  it('root is not blocked by FIFOs the build plants at the next control files\' names', async () => {
    const r = await runYaml(
      dirs().ws,
      `version: 0.2
env:
  exported-variables: [V]
phases:
  build:
    commands:
      - for i in $(seq 1 20); do n=$(printf %05d "$i"); mkfifo "$CTL/$n-cmd.sh" "$CTL/$n-export.query.sh" "$CTL/$n-export.query.in"; done; true
      - V=after
`,
      { user: NOBODY, env: env() },
    );
    expect(r.status).toBe('SUCCEEDED');
    expect(r.output).toMatch(/Permission denied/);
    expect(r.exportedVariables).toEqual({ V: 'after' });
  });

  it('root does not read the exported variables through a symlink the build swaps in while the shell answers', async () => {
    // Many names keep the shell answering for a while: long enough for the build's background job to
    // replace the answer, once it has started, with a symlink to the secret.
    const names = ['V', ...Array.from({ length: 20_000 }, (_, i) => `UNSET_${i}`)];
    const r = await runYaml(
      dirs().ws,
      `version: 0.2
env:
  exported-variables: [${names.join(', ')}]
phases:
  build:
    commands:
      - V=legit
      - |
        (
          # The names are predictable (the directory cannot be listed): try each until the answer is there,
          # for a bounded while.
          for j in $(seq 1 20000); do
            for i in $(seq 1 8); do
              f="$CTL/$(printf %05d "$i")-export.query.out"
              if [ -s "$f" ]; then ln -s "$SECRET" "$f.new"; mv -f "$f.new" "$f"; exit; fi
            done
          done
        ) >/dev/null 2>&1 &
`,
      { user: NOBODY, env: env() },
    );
    expect(r.status).toBe('SUCCEEDED');
    expect(r.exportedVariables).toEqual({ V: 'legit' });
  }, 20_000);

  it('refuses a control directory inside one the build\'s user can write, where it could replace it', async () => {
    const yaml = 'version: 0.2\nphases:\n  build:\n    commands: [echo hi]\n';
    await expect(runYaml(dirs().ws, yaml, { user: NOBODY, controlDir: join(dirs().ws, 'ctl') })).rejects.toThrow(/uid 65534 may write .*ws, so it could replace the directory/);
  });
});
