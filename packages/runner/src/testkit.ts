import { writeFiles } from '@conveyor/testing';
import { parseBuildspec } from './buildspec.js';
import type { BuildspecRun } from './buildspec-job.js';

/**
 * For tests (`@conveyor/runner/testkit`): a build that has finished in `workspace`, which now holds
 * `files`, run from a buildspec of one `true` command followed by `sections` (YAML such as
 * `reports:\n  unit:\n    files: [ 'r.xml' ]\n`); `over` changes its outcome.
 */
export async function finishedBuild(workspace: string, files: Record<string, string>, sections = '', over: Partial<BuildspecRun> = {}): Promise<BuildspecRun> {
  await writeFiles(workspace, files);
  const spec = parseBuildspec(`version: 0.2\nphases:\n  build:\n    commands: [ 'true' ]\n${sections}`);
  return { status: 'SUCCEEDED', workspace, spec, ...over };
}
