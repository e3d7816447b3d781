/** A selection that would read outside the workspace, collide, match nothing, or whose globs are too costly. */
export class FileSelectionError extends Error {
  override name = 'FileSelectionError';
}
