/** A glob refused for its shape, or that could not be compiled or matched within its time limits. */
export class GlobError extends Error {
  override name = 'GlobError';
  constructor(
    /** Where the glob was written, e.g. `artifacts.files[0]` or `source.triggers.0.branches.include.1`. */
    readonly field: string,
    /** What is wrong, without the field. */
    readonly problem: string,
  ) {
    super(`${field}: ${problem}`);
  }
}
