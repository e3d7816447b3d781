import type { FastifyRequest } from 'fastify';
import { InputError } from './errors.js';

/**
 * The first key that could reach a prototype if the body were ever merged into an object: `__proto__`,
 * or `constructor` holding `prototype` (secure-json-parse's rules, which fastify's parser applies).
 */
export function poisonedPath(parsed: unknown): { path: string; key: string } | undefined {
  const stack: { value: unknown; path: string }[] = [{ value: parsed, path: 'body' }];
  while (stack.length) {
    const { value, path } = stack.pop()!;
    if (typeof value !== 'object' || value === null) continue;
    if (Object.hasOwn(value, '__proto__')) return { path: `${path}.__proto__`, key: '__proto__' };
    const ctor: unknown = Object.hasOwn(value, 'constructor') ? (value as { constructor: unknown }).constructor : undefined;
    if (typeof ctor === 'object' && ctor !== null && Object.hasOwn(ctor, 'prototype')) return { path: `${path}.constructor.prototype`, key: 'constructor.prototype' };
    for (const [key, child] of Object.entries(value)) stack.push({ value: child, path: `${path}.${key}` });
  }
  return undefined;
}

/**
 * A JSON body parser (for `addContentTypeParser('application/json', { parseAs: 'string' }, parseJsonBody)`,
 * or in place of `getDefaultJsonParser('error', 'error')`) that refuses what fastify's refuses, but says
 * why: fastify reports a `__proto__` key as "not valid JSON". Errors are InputErrors naming `body`. Unlike
 * fastify's, it takes a blank body as no body (fastify answers 400).
 */
export function parseJsonBody(_request: FastifyRequest, body: string | Buffer, done: (err: Error | null, body?: unknown) => void): void {
  const text = typeof body === 'string' ? body : body.toString('utf8');
  // No body, or a blank one (`curl -X POST -H 'content-type: application/json'`), is no body: a route
  // whose body is optional takes it, the others say it is required.
  if (text.trim() === '') return done(null, undefined);
  let parsed: unknown;
  try {
    // Plain JSON.parse only defines a `__proto__` key, it never sets a prototype; the walk below refuses it.
    parsed = JSON.parse(text);
  } catch (err) {
    const at = /at position (\d+)/.exec((err as Error).message)?.[1];
    return done(new InputError(`body is not valid JSON${at ? ` (at position ${at})` : ''}`, [{ path: 'body', message: 'not valid JSON' }]));
  }
  const poisoned = poisonedKeyError(parsed);
  if (poisoned) return done(poisoned);
  done(null, parsed);
}

/** The InputError naming the first prototype-poisoning key of a parsed body (see poisonedPath), if it has one. */
export function poisonedKeyError(parsed: unknown): InputError | undefined {
  const poisoned = poisonedPath(parsed);
  return poisoned ? new InputError(`${poisoned.path}: key ${poisoned.key} is not allowed`, [{ path: poisoned.path, message: `key ${poisoned.key} is not allowed` }]) : undefined;
}
