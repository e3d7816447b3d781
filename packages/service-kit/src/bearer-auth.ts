import { createHash, timingSafeEqual } from 'node:crypto';
import type { FastifyReply, FastifyRequest } from 'fastify';
import { UnauthorizedError } from './errors.js';

const digest = (s: string) => createHash('sha256').update(s).digest();

/**
 * A preHandler requiring `Authorization: Bearer <token>` when a token is configured (none: open).
 * Both sides are hashed first so the comparison is constant-time whatever the lengths.
 */
export function bearerAuth(token: string | undefined) {
  const expected = token === undefined ? undefined : digest(token);
  return async (request: FastifyRequest, reply: FastifyReply): Promise<void> => {
    if (!expected) return;
    const match = /^Bearer\s+(\S+)\s*$/i.exec(request.headers.authorization ?? '');
    const ok = match?.[1] !== undefined && timingSafeEqual(digest(match[1]), expected);
    if (!ok) {
      reply.header('www-authenticate', 'Bearer');
      throw new UnauthorizedError('missing or invalid bearer token', [{ path: 'headers.authorization', message: 'a Bearer token of this service is required' }]);
    }
  };
}
