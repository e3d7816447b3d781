export interface VersionDir {
  name: string;
  mtimeMs: number;
}

/** Version directories to delete: all but the newest `keep`, never one in `protect` (serving or running). */
export function versionsToPrune(dirs: readonly VersionDir[], keep: number, protect: ReadonlySet<string>): string[] {
  return [...dirs]
    .sort((a, b) => b.mtimeMs - a.mtimeMs || b.name.localeCompare(a.name))
    .slice(keep)
    .map((d) => d.name)
    .filter((name) => !protect.has(name));
}
