import { randomUUID } from 'node:crypto';
import { mkdir, open, readdir, readFile, rename, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { PipelineName } from '@conveyor/contracts';
import { CURRENT_FILE, parseRecord, VERSION_RECORD_FILE, type DeploymentRecord } from '../domain/deployment-record.js';
import type { VersionDir } from '../domain/prune.js';

async function readText(path: string): Promise<string | undefined> {
  try {
    return await readFile(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
}

/** Write to a temporary file, fsync, rename: a reader sees the old record or the new one, never half. */
export async function writeJsonAtomic(path: string, value: unknown): Promise<void> {
  const tmp = `${path}.${randomUUID()}.tmp`;
  // Root's records: nothing a deployed version needs to read.
  const fh = await open(tmp, 'w', 0o600);
  try {
    await fh.writeFile(`${JSON.stringify(value, null, 2)}\n`);
    await fh.sync();
  } finally {
    await fh.close();
  }
  try {
    await rename(tmp, path);
  } catch (err) {
    await rm(tmp, { force: true });
    throw err;
  }
}

/** The files under `<DEPLOY_DIR>`: `<pipeline>/current.json` and `<pipeline>/<runId>-<attempt>/…`. */
export class DeploymentFiles {
  constructor(readonly root: string) {}

  pipelineDir(pipeline: string): string {
    // Contracts already validated it; parse again because this name becomes a path.
    return join(this.root, PipelineName.parse(pipeline));
  }

  versionDir(pipeline: string, version: string): string {
    if (!/^[a-z0-9][a-z0-9-]*-[0-9]+$/.test(version)) throw new Error(`invalid version name: ${version}`);
    return join(this.pipelineDir(pipeline), version);
  }

  async readCurrent(pipeline: string): Promise<DeploymentRecord | undefined> {
    return parseRecord(await readText(join(this.pipelineDir(pipeline), CURRENT_FILE)));
  }

  async writeCurrent(record: DeploymentRecord): Promise<void> {
    await mkdir(this.pipelineDir(record.pipeline), { recursive: true });
    await writeJsonAtomic(join(this.pipelineDir(record.pipeline), CURRENT_FILE), record);
  }

  async readVersionRecord(versionDir: string): Promise<DeploymentRecord | undefined> {
    return parseRecord(await readText(join(versionDir, VERSION_RECORD_FILE)));
  }

  async writeVersionRecord(versionDir: string, record: DeploymentRecord): Promise<void> {
    await writeJsonAtomic(join(versionDir, VERSION_RECORD_FILE), record);
  }

  /** Pipelines that have a directory under the root (names that are not pipeline names are ignored). */
  async pipelines(): Promise<string[]> {
    const entries = await readdir(this.root, { withFileTypes: true }).catch(() => []);
    return entries.filter((e) => e.isDirectory() && PipelineName.safeParse(e.name).success).map((e) => e.name).sort();
  }

  async versions(pipeline: string): Promise<VersionDir[]> {
    const dir = this.pipelineDir(pipeline);
    const entries = await readdir(dir, { withFileTypes: true }).catch(() => []);
    const dirs: VersionDir[] = [];
    for (const e of entries) {
      if (!e.isDirectory() || !/^[a-z0-9][a-z0-9-]*-[0-9]+$/.test(e.name)) continue;
      const info = await stat(join(dir, e.name)).catch(() => undefined);
      if (info) dirs.push({ name: e.name, mtimeMs: info.mtimeMs });
    }
    return dirs;
  }

  /** Every record on disk: each pipeline's current.json and each version's own record. */
  async allRecords(): Promise<DeploymentRecord[]> {
    const records: DeploymentRecord[] = [];
    for (const pipeline of await this.pipelines()) {
      const current = await this.readCurrent(pipeline);
      if (current) records.push(current);
      for (const v of await this.versions(pipeline)) {
        const rec = await this.readVersionRecord(join(this.pipelineDir(pipeline), v.name));
        if (rec) records.push(rec);
      }
    }
    return records;
  }
}
