export async function pipelineVsBash(_url: string, _rounds: number): Promise<{ lines: string[]; ratio: number; conveyorMs: number; bashMs: number }> {
  throw new Error('not written yet');
}
