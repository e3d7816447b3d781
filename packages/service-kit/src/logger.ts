import { pino, type Logger } from 'pino';

export type { Logger };

/**
 * An error as logged: pino's standard form, without the arguments of a Redis command it carries. ioredis
 * attaches the failed command (`command.args`), and a failed transaction each queued one's
 * (`previousErrors`), to its errors: a stored pipeline definition among them holds its webhook secret
 * inside a string, where redaction by key cannot reach it.
 */
export function serializeError(err: unknown): unknown {
  if (!(err instanceof Error)) return err;
  return withoutCommandArgs(pino.stdSerializers.err(err)) as unknown;
}

function withoutCommandArgs(value: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = { ...value };
  const command = out.command as { name?: unknown } | undefined;
  if (command && typeof command === 'object') out.command = { name: command.name };
  if (Array.isArray(out.previousErrors)) {
    out.previousErrors = out.previousErrors.map((e: unknown) => (e && typeof e === 'object' ? withoutCommandArgs(pino.stdSerializers.err(e as Error) as unknown as Record<string, unknown>) : e));
  }
  if (out.cause instanceof Error) out.cause = withoutCommandArgs(pino.stdSerializers.err(out.cause) as unknown as Record<string, unknown>);
  else if (out.cause && typeof out.cause === 'object') out.cause = withoutCommandArgs(out.cause as Record<string, unknown>);
  return out;
}

/** JSON logs, one constant message plus data. Secrets are redacted by key wherever they appear. */
export function createLogger(service: string, level = 'info', destination?: pino.DestinationStream): Logger {
  const options: pino.LoggerOptions = {
    name: service,
    level,
    base: { service },
    serializers: { err: serializeError, error: serializeError },
    redact: {
      paths: ['*.webhookSecret', 'webhookSecret', 'req.headers.authorization', 'req.headers["x-hub-signature-256"]', '*.token', 'token'],
      censor: '[redacted]',
    },
  };
  return destination ? pino(options, destination) : pino(options);
}
