import { createHash, timingSafeEqual } from 'node:crypto';
import { UnauthorizedError } from '@conveyor/service-kit';

const digest = (s: string) => createHash('sha256').update(s).digest();

/** Checks `Authorization: Bearer <token>` in constant time (digests make the lengths equal). */
export function checkBearer(header: string | undefined, token: string): void {
  const given = header?.startsWith('Bearer ') ? header.slice('Bearer '.length) : '';
  if (!given || !timingSafeEqual(digest(given), digest(token))) {
    throw new UnauthorizedError('a valid Authorization: Bearer <CONVEYOR_API_TOKEN> header is required');
  }
}
