import { copyFile, stat, truncate } from 'node:fs/promises';
import { join } from 'node:path';
import { OUTPUT_FILE } from '../domain/deployment-record.js';
import type { DeploymentFiles } from './deployment-files.js';

/**
 * A deployed command writes its output to `.conveyor-output.log` for as long as it runs, through a file
 * it holds open for append (so the output outlives the deployer). Above `maxBytes` the log is copied to
 * `.conveyor-output.log.1` (replacing the one before) and emptied in place: the command keeps its open
 * file and goes on writing at the new end. Lines written between the copy and the emptying are lost,
 * as with logrotate's copytruncate. Returns the logs it rotated.
 */
export async function rotateOutputLogs(files: DeploymentFiles, maxBytes: number): Promise<string[]> {
  const rotated: string[] = [];
  for (const pipeline of await files.pipelines()) {
    for (const version of await files.versions(pipeline)) {
      const log = join(files.pipelineDir(pipeline), version.name, OUTPUT_FILE);
      const info = await stat(log).catch(() => undefined);
      if (!info?.isFile() || info.size <= maxBytes) continue;
      await copyFile(log, `${log}.1`);
      await truncate(log, 0);
      rotated.push(log);
    }
  }
  return rotated;
}
