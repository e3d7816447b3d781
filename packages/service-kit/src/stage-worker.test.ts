import { readdir, readFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { explainFailedStageJob, MAX_STALLED_REDELIVERIES, redeliveryNote } from './stage-worker.js';

/** Every .js file under `dir`. */
async function scripts(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const entry of await readdir(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) out.push(...(await scripts(path)));
    else if (entry.name.endsWith('.js')) out.push(path);
  }
  return out;
}

describe('redeliveryNote', () => {
  it('says nothing of a first delivery, and why a later one runs the stage again', () => {
    expect(redeliveryNote({ deliveries: 0 })).toBeUndefined();
    expect(redeliveryNote({ deliveries: 1 })).toBe('[conveyor] delivery 2 of this job (an earlier worker stopped before finishing)\n');
    expect(redeliveryNote({ deliveries: 1, previousError: 'ECONNRESET' })).toBe('[conveyor] delivery 2 of this job: the last one errored (ECONNRESET)\n');
  });
});

describe('explainFailedStageJob', () => {
  it("says what BullMQ's stalled-job failure means, and how many deliveries it took", () => {
    expect(explainFailedStageJob('job stalled more than allowable limit')).toBe(
      `the worker running it stopped (killed, or out of touch with Redis past its lock) ${MAX_STALLED_REDELIVERIES + 1} times; it is not given to a worker again`,
    );
    expect(explainFailedStageJob('malformed build job x')).toBe('malformed build job x');
  });

  it('matches the reason the installed BullMQ gives (an upgrade that rewords it fails here)', async () => {
    const dist = dirname(createRequire(import.meta.url).resolve('bullmq'));
    const texts = await Promise.all((await scripts(dist)).map((f) => readFile(f, 'utf8')));
    const reasons = new Set(texts.flatMap((t) => t.match(/job stalled more than [a-z ]+/g) ?? []));
    expect([...reasons]).toEqual(['job stalled more than allowable limit']);
    expect(explainFailedStageJob([...reasons][0]!)).toContain('not given to a worker again');
  });
});
