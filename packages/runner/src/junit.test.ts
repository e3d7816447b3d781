import { readFileSync } from 'node:fs';
import { mkdtemp, realpath, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { FailedTestCase } from '@conveyor/contracts';
import { resolveFiles } from './globs.js';
import { JUNIT_LIMITS, JUnitError, JUnitReader, parseJUnit, type JUnitLimits } from './junit.js';

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

  it("shortens a failed case's suite and name to 500 characters and its message to 2000, each marked with …, within the contract's limits", () => {
    const huge = 'x'.repeat(64 * 1024);
    const cases = Array.from({ length: 10 }, (_, i) => `<testcase classname="${huge}" name="${i}${huge}"><failure message="${huge}"/></testcase>`).join('');
    const r = parseJUnit(`<testsuite name="s">${cases}<testcase name="short"><failure message="m"/></testcase></testsuite>`);
    expect(r.failed).toBe(11);
    for (const [i, f] of r.failures.slice(0, 10).entries()) {
      expect(f).toEqual({ suite: `${'x'.repeat(500)}…`, name: `${i}${'x'.repeat(499)}…`, message: `${'x'.repeat(2000)}…` });
      expect(FailedTestCase.safeParse(f).success).toBe(true);
    }
    expect(r.failures[10]).toEqual({ suite: 's', name: 'short', message: 'm' });
    expect(Buffer.byteLength(JSON.stringify(r.failures))).toBeLessThan(40_000);
    // Never between the halves of a character outside the BMP (a lone surrogate is not text).
    const emoji = parseJUnit(`<testsuite><testcase classname="${'a'.repeat(499)}${'😀'.repeat(10)}" name="n"><failure/></testcase></testsuite>`);
    expect(emoji.failures[0]!.suite).toBe(`${'a'.repeat(499)}…`);
  });

  it('leaves undefined entities as written instead of expanding anything', () => {
    const r = parseJUnit('<testsuite><testcase classname="c" name="a&amp;b"><failure message="&custom; &#65;"/></testcase></testsuite>');
    expect(r.failures).toEqual([{ suite: 'c', name: 'a&b', message: '&custom; A' }]);
  });
});

/** One element with `count` attributes: fast-xml-parser took 92 s and 3.4 GB on 48 MB of it. */
const attributeBomb = (count: number) => `<testsuite ${Array.from({ length: count }, (_, i) => `a${i}=""`).join(' ')}/>`;

describe('JUnitReader: reports parsed off the main thread, within limits', () => {
  let ws: string;
  beforeEach(async () => {
    ws = await realpath(await mkdtemp(join(tmpdir(), 'cv-junit-')));
  });
  afterEach(async () => {
    await rm(ws, { recursive: true, force: true });
  });

  /** Writes the reports and reads each with one reader, in order: its summary, or the JUnitError's message. */
  async function readAll(reports: Record<string, string>, limits: Partial<JUnitLimits> = {}): Promise<{ results: unknown[]; stallMs: number }> {
    for (const [name, text] of Object.entries(reports)) await writeFile(join(ws, name), text);
    const files = await resolveFiles(ws, { files: ['*.xml'] });
    const reader = new JUnitReader({ ...JUNIT_LIMITS, ...limits });
    const delay = monitorEventLoopDelay({ resolution: 10 });
    delay.enable();
    try {
      const results: unknown[] = [];
      for (const name of Object.keys(reports)) {
        results.push(
          await reader.read(files, name).catch((err: unknown) => {
            expect(err).toBeInstanceOf(JUnitError);
            return (err as Error).message;
          }),
        );
      }
      await new Promise((r) => setTimeout(r, 30));
      return { results, stallMs: delay.max / 1e6 };
    } finally {
      delay.disable();
      await reader.close();
    }
  }

  it('counts as parseJUnit does, and returns what is wrong with a report as a JUnitError', async () => {
    const { results } = await readAll({ 'a.xml': fixture('failing.xml'), 'b.xml': fixture('malformed.xml'), 'c.xml': fixture('nested.xml') });
    expect(results[0]).toEqual(parseJUnit(fixture('failing.xml')));
    expect(results[1]).toMatch(/^malformed XML at line \d+, column \d+: /);
    expect(results[2]).toEqual(parseJUnit(fixture('nested.xml')));
  });

  it('a report that needs more memory than maxHeapMb fails saying so, without holding the event loop; the next one gets a new thread', async () => {
    const { results, stallMs } = await readAll({ 'a.xml': attributeBomb(400_000), 'b.xml': fixture('passing.xml') }, { maxHeapMb: 32 });
    expect(results[0]).toBe('the report needs more than 32 MB of memory to parse; it is not counted');
    expect(results[1]).toEqual(parseJUnit(fixture('passing.xml')));
    expect(stallMs).toBeLessThan(1500); // a parse in this thread would hold it for seconds
  });

  it('a report that takes longer than timeoutMs fails saying so, without holding the event loop', async () => {
    const started = performance.now();
    const { results, stallMs } = await readAll({ 'a.xml': attributeBomb(400_000), 'b.xml': fixture('skipped.xml') }, { timeoutMs: 300 });
    expect(results[0]).toBe('the report took longer than 0.3 s to parse; it is not counted');
    expect(results[1]).toEqual(parseJUnit(fixture('skipped.xml')));
    expect(performance.now() - started).toBeLessThan(6000);
    expect(stallMs).toBeLessThan(1500); // a parse in this thread would hold it for seconds
  });

  it('refuses, before reading it, a report over maxFileBytes or one that takes the stage past maxTotalBytes', async () => {
    const report = fixture('passing.xml');
    const bytes = Buffer.byteLength(report);
    expect((await readAll({ 'a.xml': report }, { maxFileBytes: bytes - 1 })).results).toEqual([`the report is ${bytes} bytes, more than the ${bytes - 1} bytes a report may be; it is not read`]);
    const { results } = await readAll({ 'b.xml': report, 'c.xml': report }, { maxTotalBytes: bytes * 2 - 1 });
    expect(results[0]).toEqual(parseJUnit(report));
    expect(results[1]).toBe(`with this report the stage's reports come to ${bytes * 2} bytes, more than the ${bytes * 2 - 1} bytes allowed in all; it is not read`);
  });
});
