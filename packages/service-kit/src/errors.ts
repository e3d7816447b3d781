import { issuePath } from '@conveyor/contracts';
/** The one error taxonomy. Domain errors carry no HTTP status: http.ts and worker.ts map them. */
export class ConveyorError extends Error {
  override name = 'ConveyorError';
}
export interface FieldIssue {
  path: string;
  message: string;
}
/** The caller sent something wrong; `issues` name the fields. */
export class InputError extends ConveyorError {
  override name = 'InputError';
  constructor(message: string, readonly issues: FieldIssue[] = []) {
    super(message);
  }
}
export class UnauthorizedError extends ConveyorError {
  override name = 'UnauthorizedError';
  /** `issues` name what was missing or wrong (a header), never a secret. */
  constructor(message: string, readonly issues: FieldIssue[] = []) {
    super(message);
  }
}
export class NotFoundError extends ConveyorError {
  override name = 'NotFoundError';
}
export class ConflictError extends ConveyorError {
  override name = 'ConflictError';
}
/** A dependency (Redis, the artifact store) is not there right now: retry later. */
export class UnavailableError extends ConveyorError {
  override name = 'UnavailableError';
}
/** A job that must not be retried: its input can never succeed. */
export class PermanentJobError extends ConveyorError {
  override name = 'PermanentJobError';
}

/** Turns zod issues into field issues with dotted paths. */
export function issuesFromZod(error: { issues: ReadonlyArray<{ path: ReadonlyArray<PropertyKey>; message: string }> }, prefix = ''): FieldIssue[] {
  return error.issues.map((i) => ({
    path: issuePath(i.path, prefix),
    message: i.message,
  }));
}
