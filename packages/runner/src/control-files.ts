import type { BuildUser } from './shell-process.js';
import { join } from 'node:path';
import { createFile, fileOwner, readOwnedFile } from './safe-files.js';

/*
 * Files the session hands to the shell. A user command goes into a file of its own, byte for
 * byte; everything else we source is one of the constant scripts below. No user text is ever
 * pasted into shell text of ours.
 *
 * The control directory is the service's (see prepareControlDir): the build's user can open the
 * files it is given but cannot add or replace any, so none of them can be a symlink or FIFO it
 * planted. Each is created afresh (createFile refuses an existing path) and handed to the user.
 */

/** Far above what a pipeline variable should hold; the answer is read into memory. */
export const MAX_EXPORT_BYTES = 1024 * 1024;

const SUCCEEDING = {
  '1': 'export CODEBUILD_BUILD_SUCCEEDING=1\n',
  '0': 'export CODEBUILD_BUILD_SUCCEEDING=0\n',
} as const;

/**
 * Prints `name NUL value NUL` for each name read from stdin that is set in the shell. Names are
 * checked against the identifier grammar before the (then harmless) eval; the parser has already
 * refused anything else. eval is needed because /bin/sh has no ${!name}.
 */
const EXPORT_QUERY = `while IFS= command read -r __cv_n; do
  case $__cv_n in ''|[!A-Za-z_]*|*[!A-Za-z0-9_]*) continue ;; esac
  eval "__cv_set=\\\${$__cv_n+x}"
  [ -n "$__cv_set" ] || continue
  eval "__cv_v=\\\${$__cv_n}"
  command printf '%s\\0%s\\0' "$__cv_n" "$__cv_v"
done
unset __cv_n __cv_set __cv_v
`;

export class ControlFiles {
  private seq = 0;
  private readonly written = new Set<string>();
  constructor(
    readonly dir: string,
    private readonly user?: BuildUser,
  ) {}

  /** Creates a control file the build's shell (possibly another user) can read, and nobody else. */
  private write(path: string, text: string): Promise<void> {
    return createFile(path, text, this.user);
  }

  private next(suffix: string): string {
    this.seq += 1;
    return join(this.dir, `${String(this.seq).padStart(5, '0')}-${suffix}`);
  }

  /** The constant script that sets CODEBUILD_BUILD_SUCCEEDING (one file per value, written once). */
  async succeeding(value: '0' | '1'): Promise<string> {
    const path = join(this.dir, `succeeding-${value}.sh`);
    if (!this.written.has(path)) await this.write(path, SUCCEEDING[value]);
    this.written.add(path);
    return path;
  }

  /** A user command, written as is to a file of its own. */
  async command(text: string): Promise<string> {
    const path = this.next('cmd.sh');
    await this.write(path, text.endsWith('\n') ? text : `${text}\n`);
    return path;
  }

  /**
   * The export query with its input (the names) and the empty file for its answer: the shell may not
   * create files here, so it writes into this one. `read` parses the answer once the shell ran it;
   * it throws if the answer is not that file any more, or is too big.
   */
  async exportQuery(names: readonly string[]): Promise<{ path: string; read: () => Promise<Record<string, string>> }> {
    const path = this.next('export.query.sh');
    const stem = path.slice(0, -'.sh'.length);
    await this.write(path, EXPORT_QUERY);
    await this.write(`${stem}.in`, names.map((n) => `${n}\n`).join(''));
    await this.write(`${stem}.out`, '');
    const read = async () => {
      const answer = await readOwnedFile(`${stem}.out`, { owner: fileOwner(this.user), maxBytes: MAX_EXPORT_BYTES });
      return parseNulPairs(answer.toString('utf8'));
    };
    return { path, read };
  }
}

export function parseNulPairs(text: string): Record<string, string> {
  const parts = text.split('\0');
  const out: Record<string, string> = {};
  for (let i = 0; i + 1 < parts.length; i += 2) out[parts[i]!] = parts[i + 1]!;
  return out;
}
