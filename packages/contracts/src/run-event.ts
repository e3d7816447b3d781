import { z } from 'zod';
import { IsoTime, PipelineName, RunId, StageType } from './common.js';
import { RunStatus, StageStatus } from './run.js';

const Base = { v: z.literal(1), at: IsoTime, runId: RunId, pipeline: PipelineName };

/** Emitted by the orchestrator on the `events` stream with every stored transition. For watching, not truth. */
export const RunEvent = z.discriminatedUnion('type', [
  z.object({ ...Base, type: z.literal('run.created'), trigger: z.string() }),
  z.object({ ...Base, type: z.literal('run.finished'), status: RunStatus, durationMs: z.number().nonnegative() }),
  z.object({ ...Base, type: z.literal('stage.started'), stage: z.string(), stageType: StageType, attempt: z.number().int() }),
  z.object({
    ...Base,
    type: z.literal('stage.finished'),
    stage: z.string(),
    stageType: StageType,
    attempt: z.number().int(),
    status: StageStatus,
    durationMs: z.number().nonnegative(),
  }),
]);
export type RunEvent = z.infer<typeof RunEvent>;
