import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { JUnitError, parseJUnit } from './junit.js';

const fixture = (name: string) => readFileSync(join(import.meta.dirname, '..', 'test', 'fixtures', 'junit', name), 'utf8');

function errorOf(xml: string, maxBytes?: number): string {
  try {
    parseJUnit(xml, maxBytes);
  } catch (err) {
    expect(err).toBeInstanceOf(JUnitError);
    return (err as Error).message;
  }
  throw new Error('expected parseJUnit to throw');
}

describe('parseJUnit', () => {
  it('counts a passing report', () => {
    expect(parseJUnit(fixture('passing.xml'))).toEqual({ total: 3, passed: 3, failed: 0, skipped: 0, failures: [] });
  });

  it('counts failures from the testcases, not the tests= attribute, with decoded messages', () => {
    const r = parseJUnit(fixture('failing.xml'));
    expect(r).toMatchObject({ total: 3, passed: 1, failed: 2, skipped: 0 });
    expect(r.failures).toEqual([
      { suite: 'tests.test_api', name: 'test_status', message: 'assert 500 == 200 & <body>' },
      { suite: 'tests.test_api', name: 'test_body', message: `expected "a" got 'b'` },
    ]);
  });

  it('counts <error> as failed', () => {
    const r = parseJUnit(fixture('errors.xml'));
    expect(r).toMatchObject({ total: 2, passed: 1, failed: 1, skipped: 0 });
    expect(r.failures).toEqual([{ suite: 'com.example.ServiceTest', name: 'connects', message: 'java.net.ConnectException: refused' }]);
  });

  it('counts <skipped/> and <skipped>text</skipped> as skipped', () => {
    expect(parseJUnit(fixture('skipped.xml'))).toEqual({ total: 3, passed: 1, failed: 0, skipped: 2, failures: [] });
  });

  it('walks nested suites and names failures by their nearest suite when there is no classname', () => {
    const r = parseJUnit(fixture('nested.xml'));
    expect(r).toMatchObject({ total: 5, passed: 2, failed: 2, skipped: 1 });
    expect(r.failures).toEqual(
      expect.arrayContaining([
        { suite: 'root.child.grandchild', name: 'deep fails', message: 'boom' },
        { suite: 'second', name: 'errors' },
      ]),
    );
  });

  it('reads a bare <testsuite> root', () => {
    expect(parseJUnit('<testsuite name="s"><testcase name="a"/><testcase name="b"><failure/></testcase></testsuite>')).toMatchObject({ total: 2, passed: 1, failed: 1 });
  });

  it('falls back to the suites counters only when there are no testcases', () => {
    expect(parseJUnit(fixture('counts-only.xml'))).toEqual({ total: 15, passed: 8, failed: 3, skipped: 4, failures: [] });
    expect(parseJUnit('<testsuites/>')).toEqual({ total: 0, passed: 0, failed: 0, skipped: 0, failures: [] });
  });

  it('throws a clear error on malformed XML', () => {
    expect(errorOf(fixture('malformed.xml'))).toMatch(/^malformed XML at line \d+, column \d+: /);
    expect(errorOf('not xml at all')).toMatch(/^malformed XML/);
  });

  it('refuses a document that is not JUnit', () => {
    expect(errorOf('<?xml version="1.0"?><coverage line-rate="1"/>')).toBe('not a JUnit report: root element is <coverage>, expected <testsuites> or <testsuite>');
  });

  it('refuses DOCTYPEs (no entity expansion) and oversized reports', () => {
    const bomb = '<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;">]><testsuite><testcase name="&lol2;"/></testsuite>';
    expect(errorOf(bomb)).toMatch(/DOCTYPE/);
    expect(errorOf(fixture('passing.xml'), 100)).toBe('report is larger than 100 bytes');
  });

  it('leaves undefined entities as written instead of expanding anything', () => {
    const r = parseJUnit('<testsuite><testcase classname="c" name="a&amp;b"><failure message="&custom; &#65;"/></testcase></testsuite>');
    expect(r.failures).toEqual([{ suite: 'c', name: 'a&b', message: '&custom; A' }]);
  });
});
