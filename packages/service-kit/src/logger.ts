import { pino, type Logger } from 'pino';

export type { Logger };

/** JSON logs, one constant message plus data. Secrets are redacted by key wherever they appear. */
export function createLogger(service: string, level = 'info'): Logger {
  return pino({
    name: service,
    level,
    base: { service },
    redact: {
      paths: ['*.webhookSecret', 'webhookSecret', 'req.headers.authorization', 'req.headers["x-hub-signature-256"]', '*.token', 'token'],
      censor: '[redacted]',
    },
  });
}
