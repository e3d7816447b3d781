import { spawn } from 'node:child_process';
import { createHash, randomUUID } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { chmod, mkdir, rm, stat } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { ArtifactTooLargeError, byteLimit, DEFAULT_ARTIFACT_MAX_BYTES, type ArtifactStore } from '@conveyor/artifacts';
import { PermanentJobError } from '@conveyor/service-kit';
import type { SourceRepository } from '../ports.js';

const SHA = /^[0-9a-f]{40}$/;

/** Git never prompts, never runs hooks or helpers from the user's config, never uses the system config. */
const GIT_ENV: NodeJS.ProcessEnv = {
  PATH: process.env.PATH,
  HOME: process.env.HOME,
  GIT_TERMINAL_PROMPT: '0',
  GIT_CONFIG_NOSYSTEM: '1',
  GIT_CONFIG_GLOBAL: '/dev/null',
  GIT_ASKPASS: 'echo',
  // ssh never asks (a host key, a passphrase) and gives up on a silent server.
  GIT_SSH_COMMAND: 'ssh -o BatchMode=yes -o ServerAliveInterval=15 -o ServerAliveCountMax=4',
  LANG: 'C',
};

/**
 * Brings a mirror up to date, run by `flock --no-fork` holding `<mirror>.flock`: the shell, then the git
 * it execs, is flock's own process, so the lock lasts exactly as long as that git runs (even if this
 * service is killed), and a timeout's signal reaches git itself. Every git that writes a mirror runs so:
 * a lock file found in the mirror while the lock is held was left by a git that was killed (a container
 * stopped mid-fetch), and is removed, or every later fetch would fail on it. A mirror without HEAD is
 * (re)made by a clone. Constant text: the mirror comes as $1, the repository as $2.
 */
const REFRESH_MIRROR = `if git -C "$1" config remote.origin.url >/dev/null 2>&1; then
  cd -- "$1" || exit 1
  find . -path ./objects -prune -o -type f -name '*.lock' -exec rm -f -- {} + 2>/dev/null
  exec git -c http.lowSpeedLimit=1000 -c http.lowSpeedTime=60 fetch --prune --quiet -- origin '+refs/heads/*:refs/heads/*' '+refs/tags/*:refs/tags/*'
fi
rm -rf -- "$1" || exit 1
exec git -c http.lowSpeedLimit=1000 -c http.lowSpeedTime=60 clone --mirror --quiet -- "$2" "$1"`;

/** A snapshot in the limit's message. Past the limit the stage fails (PermanentJobError): the commit stays as large. */
const SNAPSHOT = 'source snapshot';

/**
 * Keeps a bare mirror per repository under `cacheDir`, fetches into it, and snapshots a commit with
 * `git archive` (the CodePipeline SourceArtifact: the tree, no .git). Values are always argv, never shell.
 * A snapshot is at most `maxBytes` (the store's `ARTIFACT_MAX_BYTES`): a small repository can name one
 * large blob many times, and `git archive` writes it out each time.
 */
export class GitSourceRepository implements SourceRepository {
  private readonly locks = new Map<string, Promise<unknown>>();

  constructor(
    private readonly cacheDir: string,
    private readonly store: ArtifactStore,
    private readonly timeoutMs = 10 * 60_000,
  ) {}

  /** The store's limit: a snapshot over it is stopped while git writes it. */
  private get maxBytes(): number {
    return this.store.maxBytes ?? DEFAULT_ARTIFACT_MAX_BYTES;
  }

  private async git(args: string[], cwd?: string): Promise<string> {
    return this.run('git', args, cwd, `git ${args[0]}`);
  }

  /**
   * Runs `file` in a process group of its own; past the timeout the whole group is killed (git, and the
   * remote helper it started, which would otherwise keep running, and keep a mirror's lock). A failure
   * other than the timeout carries the program's `exitCode`. With `output`, stdout goes to that new file
   * through a count of its bytes: past `maxBytes` the group is killed too, and the run fails with a
   * PermanentJobError naming the limit (the file, partly written, is the caller's to remove).
   */
  private run(file: string, argv: string[], cwd: string | undefined, what: string, output?: { path: string; maxBytes: number }): Promise<string> {
    return new Promise((resolvePromise, reject) => {
      const child = spawn(file, argv, { cwd, env: GIT_ENV, detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
      const killGroup = () => {
        try {
          process.kill(-child.pid!, 'SIGKILL');
        } catch {
          // gone already
        }
      };
      let stdout = '';
      let stderr = '';
      let written: Promise<unknown> = Promise.resolve();
      let tooLarge: ArtifactTooLargeError | undefined;
      if (output) {
        written = pipeline(child.stdout, byteLimit(output.maxBytes, SNAPSHOT), createWriteStream(output.path, { flags: 'wx', mode: 0o600 })).catch((err: Error) => {
          if (err instanceof ArtifactTooLargeError) tooLarge = err;
          // Whatever stopped the copy (the limit, a full disk), nothing more of this program's output is wanted.
          killGroup();
          throw err;
        });
        written.catch(() => undefined); // settled in 'close'
      } else {
        child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout = (stdout + d).slice(-16 * 1024 * 1024)));
      }
      child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr = (stderr + d).slice(-64 * 1024)));
      let timedOut = false;
      const timer = setTimeout(() => {
        timedOut = true;
        killGroup();
      }, this.timeoutMs);
      child.once('error', (err) => {
        clearTimeout(timer);
        reject(new Error(`${what} failed: ${err.message}`));
      });
      child.once('close', (code) => {
        clearTimeout(timer);
        // The output file is complete (or its copy has failed) before the run settles.
        void written.then(
          () => undefined,
          (err: Error) => err,
        ).then((writeError) => {
          if (tooLarge) return reject(new PermanentJobError(tooLarge.message));
          if (code === 0 && !timedOut && !writeError) return resolvePromise(stdout.trim());
          if (writeError && !timedOut) return reject(new Error(`${what} failed: writing its output: ${writeError.message}`));
          const said = (timedOut ? `timed out after ${this.timeoutMs / 1000} s` : stderr || `exit ${code}`).trim().split('\n').filter((line) => line.trim() !== '').slice(-6).join(' ');
          reject(Object.assign(new Error(`${what} failed: ${said.length > 1500 ? `…${said.slice(-1500)}` : said}`), timedOut ? {} : { exitCode: code }));
        });
      });
    });
  }

  /** One fetch at a time per mirror in this process (git's own locks would fail the second one). */
  private serialize<T>(key: string, fn: () => Promise<T>): Promise<T> {
    const prev = this.locks.get(key) ?? Promise.resolve();
    const next = prev.then(fn, fn);
    this.locks.set(key, next.catch(() => undefined));
    return next;
  }

  async snapshot(input: { repository: string; ref: string; commit?: string; commitOnRef?: boolean; artifactKey: string; log: (line: string) => void }) {
    const mirror = join(resolve(this.cacheDir), createHash('sha256').update(input.repository).digest('hex').slice(0, 24) + '.git');
    const commit = await this.serialize(mirror, async () => {
      await this.refresh(input.repository, mirror, input.log);
      return this.resolveCommit(mirror, input.ref, input.commit, input.commitOnRef ?? false);
    });
    input.log(input.commit ? `[source] commit ${commit} (given for ${input.ref}${input.commitOnRef ? ', which holds it' : ''})\n` : `[source] resolved ${input.ref} to ${commit}\n`);
    const tmp = join(resolve(this.cacheDir), `archive-${randomUUID()}.tar`);
    try {
      // Counted as git writes it: past the limit git is stopped, long before the disk fills.
      await this.run('git', ['archive', '--format=tar', commit], mirror, 'git archive', { path: tmp, maxBytes: this.maxBytes });
      const artifact = await this.store.putTar(input.artifactKey, tmp);
      input.log(`[source] stored snapshot ${artifact.key} (${artifact.bytes} bytes, sha256 ${artifact.sha256})\n`);
      return { commit, artifact };
    } finally {
      await rm(tmp, { force: true });
    }
  }

  private async refresh(repository: string, mirror: string, log: (line: string) => void): Promise<void> {
    // Mirrors of every pipeline's repository: the services' alone, out of builds' reach. (A mode given to
    // a recursive mkdir would also close every parent it creates, such as WORK_DIR's.)
    await mkdir(resolve(this.cacheDir), { recursive: true });
    await chmod(resolve(this.cacheDir), 0o700);
    // For the log only: the locked script decides again, holding the mirror's lock.
    const exists = await stat(join(mirror, 'HEAD')).then(() => true, () => false);
    log(`[source] ${exists ? 'fetching' : 'cloning'} ${repository}\n`);
    await this.run('flock', ['--exclusive', '--no-fork', `${mirror}.flock`, 'sh', '-c', REFRESH_MIRROR, 'conveyor-refresh', mirror, repository], resolve(this.cacheDir), exists ? 'git fetch' : 'git clone');
  }

  /**
   * The commit to build: `commit` when given (on `ref`, when `onRef`: a manual run's commit must be the
   * ref's or one before it, or the run would be recorded against a ref that never held it), else the
   * commit `ref` points at.
   */
  private async resolveCommit(mirror: string, ref: string, commit: string | undefined, onRef: boolean): Promise<string> {
    if (commit) {
      if (!SHA.test(commit)) throw new PermanentJobError(`not a full commit sha: ${commit}`);
      const ok = await this.git(['cat-file', '-t', commit], mirror).then((t) => t === 'commit', () => false);
      if (!ok) throw new PermanentJobError(`commit ${commit} is not in the repository`);
      if (!onRef) return commit;
    }
    const full = ref.startsWith('refs/') ? ref : `refs/heads/${ref}`;
    const valid = await this.git(['check-ref-format', full]).then(() => true, () => false);
    if (!valid) throw new PermanentJobError(`not a valid ref: ${ref}`);
    const sha = await this.git(['rev-parse', '--verify', '--quiet', '--end-of-options', `${full}^{commit}`], mirror).catch(() => '');
    if (!SHA.test(sha)) throw new PermanentJobError(`ref ${ref} not found in the repository`);
    if (!commit) return sha;
    // Exit status 1: not an ancestor; anything else is git failing, which is retried.
    const onIt = await this.git(['merge-base', '--is-ancestor', '--', commit, sha], mirror).then(
      () => true,
      (err: Error & { exitCode?: number }) => {
        if (err.exitCode === 1) return false;
        throw err;
      },
    );
    if (!onIt) throw new PermanentJobError(`commit ${commit} is not on ${ref} (at ${sha}); give a commit of that ref, or its ref`);
    return commit;
  }
}
