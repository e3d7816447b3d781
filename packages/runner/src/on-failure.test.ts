import { describe, expect, it } from 'vitest';
import { matchesWithin, parseOnFailure } from './on-failure.js';

describe('parseOnFailure', () => {
  it.each([
    ['ABORT', { kind: 'ABORT' }],
    ['CONTINUE', { kind: 'CONTINUE' }],
    ['RETRY', { kind: 'RETRY', retries: 3, pattern: '.*' }],
    ['RETRY-5', { kind: 'RETRY', retries: 5, pattern: '.*' }],
    ['RETRY-0', { kind: 'RETRY', retries: 0, pattern: '.*' }],
    ['RETRY-timed out', { kind: 'RETRY', retries: 3, pattern: 'timed out' }],
    ['RETRY-2-ECONN(RESET|REFUSED)', { kind: 'RETRY', retries: 2, pattern: 'ECONN(RESET|REFUSED)' }],
    ['RETRY-2-a-b', { kind: 'RETRY', retries: 2, pattern: 'a-b' }],
  ])('%s', (value, expected) => {
    expect(parseOnFailure(value)).toEqual(expected);
  });

  it('refuses other values, big counts and broken regexes', () => {
    expect(() => parseOnFailure('abort')).toThrow(/expected ABORT, CONTINUE/);
    expect(() => parseOnFailure('RETRY-')).toThrow(/expected ABORT/);
    expect(() => parseOnFailure('RETRY-101')).toThrow(/between 0 and 100/);
    expect(() => parseOnFailure('RETRY-[')).toThrow(/invalid regular expression/);
  });
});

describe('matchesWithin', () => {
  it('matches line by line', () => {
    expect(matchesWithin('^npm ERR', 'ok\nnpm ERR! network')).toBe(true);
    expect(matchesWithin('^timeout$', 'no')).toBe(false);
  });

  it('gives up on a catastrophic pattern instead of blocking the event loop', () => {
    const started = Date.now();
    expect(matchesWithin('^(a+)+$', `${'a'.repeat(40)}b`, 100)).toBe(false);
    expect(Date.now() - started).toBeLessThan(2000);
  });
});
