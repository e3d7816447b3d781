// Types of junit-parse.mjs (plain JavaScript so that a worker_thread can load it; see there).

/** A failed (or errored) case; each text shortened, with `…` after it, to 500 characters (suite, name) or 2000 (message). */
export interface JUnitFailure {
  suite: string;
  name: string;
  message?: string;
}

export interface JUnitSummary {
  total: number;
  passed: number;
  failed: number;
  skipped: number;
  failures: JUnitFailure[];
}

/** The report is not JUnit XML we can read, or reading it went past a limit. */
export declare class JUnitError extends Error {
  override name: 'JUnitError';
}

export declare const MAX_JUNIT_BYTES: number;

/**
 * Reads a JUnit XML report (`<testsuites>` or a bare `<testsuite>`, nested suites allowed), in the
 * calling thread: for reports from builds, use JUnitReader, which parses in a worker_thread with
 * time and memory limits. Counts come from the testcase elements: `<failure>` and `<error>` both
 * count as failed, `<skipped/>` as skipped. DOCTYPEs are refused and entities are never expanded.
 */
export declare function parseJUnit(xml: string, maxBytes?: number): JUnitSummary;
