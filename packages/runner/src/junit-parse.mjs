// Plain JavaScript, with its types in junit-parse.d.mts: junit-worker.mjs runs this in a
// worker_thread, where neither tsx (services, ADR 0003) nor vitest's transform (tests) is loaded.
import { XMLParser, XMLValidator } from 'fast-xml-parser';

/** The report is not JUnit XML we can read. */
export class JUnitError extends Error {
  name = 'JUnitError';
}

export const MAX_JUNIT_BYTES = 50 * 1024 * 1024;
const MAX_FAILURES = 1000;
// What a failure's texts are shortened to (with `…` after): within the contracts' FAILED_TEST_LIMITS
// (1000, 1000, 4000), which a stage result must meet. A report's names are the build's to choose: ten
// failed cases named with a megabyte each made a 20 MB stage result.
const MAX_MESSAGE = 2000;
const MAX_NAME = 500;

/** `text`, shortened to `max` characters and `…` when longer. @param {string} text @param {number} max */
function shortened(text, max) {
  if (text.length <= max) return text;
  // Not between the two halves of a surrogate pair: a lone half is not text.
  const end = /[\uD800-\uDBFF]/.test(text[max - 1] ?? '') ? max - 1 : max;
  return `${text.slice(0, end)}…`;
}

const parser = new XMLParser({
  ignoreAttributes: false,
  attributeNamePrefix: '@_',
  // No entity expansion at all (the classic XML bombs); the five predefined entities are decoded below.
  processEntities: false,
  htmlEntities: false,
  parseTagValue: false,
  parseAttributeValue: false,
  trimValues: true,
  isArray: (name) => ['testsuite', 'testcase', 'failure', 'error', 'skipped'].includes(name),
});

/** @type {Record<string, string>} */
const ENTITIES = { lt: '<', gt: '>', amp: '&', quot: '"', apos: "'" };

/** @param {string} s */
function decodeEntities(s) {
  return s.replace(/&(#x[0-9a-fA-F]+|#[0-9]+|lt|gt|amp|quot|apos);/g, (whole, ent) => {
    if (ent.startsWith('#x')) return safeCodePoint(Number.parseInt(ent.slice(2), 16)) ?? whole;
    if (ent.startsWith('#')) return safeCodePoint(Number.parseInt(ent.slice(1), 10)) ?? whole;
    return ENTITIES[ent] ?? whole;
  });
}

/** @param {number} n */
function safeCodePoint(n) {
  return Number.isInteger(n) && n >= 0 && n <= 0x10ffff ? String.fromCodePoint(n) : undefined;
}

/** @typedef {Record<string, unknown>} Node */

/** @param {Node} node @param {string} name */
function attr(node, name) {
  const v = node[`@_${name}`];
  return typeof v === 'string' ? decodeEntities(v) : undefined;
}

/** @param {Node} node @param {string} name @returns {Node[]} */
function children(node, name) {
  const v = node[name];
  if (!Array.isArray(v)) return [];
  // `<skipped/>` parses as "", `<failure>text</failure>` as a string: normalise to objects.
  return v.map((c) => (c !== null && typeof c === 'object' ? c : { '#text': String(c) }));
}

/** @param {Node} problem */
function messageOf(problem) {
  const text = attr(problem, 'message') ?? (typeof problem['#text'] === 'string' ? decodeEntities(problem['#text']) : undefined);
  if (text === undefined || text === '') return undefined;
  return shortened(text, MAX_MESSAGE);
}

/** @typedef {import('./junit-parse.mjs').JUnitSummary} JUnitSummary */
/** @typedef {{ summary: JUnitSummary, sawCase: boolean }} Acc */

/** @param {Node} tc @param {string} suite @param {Acc} acc */
function countCase(tc, suite, acc) {
  const s = acc.summary;
  acc.sawCase = true;
  s.total += 1;
  const problem = children(tc, 'failure')[0] ?? children(tc, 'error')[0];
  if (problem) {
    s.failed += 1;
    if (s.failures.length < MAX_FAILURES) {
      const message = messageOf(problem);
      s.failures.push({ suite: shortened(attr(tc, 'classname') ?? suite, MAX_NAME), name: shortened(attr(tc, 'name') ?? '(unnamed)', MAX_NAME), ...(message ? { message } : {}) });
    }
  } else if (tc.skipped !== undefined) s.skipped += 1;
  else s.passed += 1;
}

/** Walks suites (nested to any depth the parser allows) without recursion. @param {Node[]} roots @param {Acc} acc */
function walkSuites(roots, acc) {
  const stack = roots.map((node) => ({ node, name: attr(node, 'name') ?? '' }));
  while (stack.length > 0) {
    const { node, name } = /** @type {{ node: Node, name: string }} */ (stack.pop());
    for (const tc of children(node, 'testcase')) countCase(tc, name, acc);
    for (const child of children(node, 'testsuite')) stack.push({ node: child, name: attr(child, 'name') ?? name });
  }
}

/** @param {Node} node @param {string} name */
function intAttr(node, name) {
  const n = Number.parseInt(attr(node, name) ?? '0', 10);
  return Number.isFinite(n) && n > 0 ? n : 0;
}

/** Only when a report has no testcase elements at all do the suites' own counters speak. @param {Node[]} nodes */
function fromAttributes(nodes) {
  /** @type {JUnitSummary} */
  const s = { total: 0, passed: 0, failed: 0, skipped: 0, failures: [] };
  for (const n of nodes) {
    s.total += intAttr(n, 'tests');
    s.failed += intAttr(n, 'failures') + intAttr(n, 'errors');
    s.skipped += intAttr(n, 'skipped') + intAttr(n, 'disabled');
  }
  s.passed = Math.max(0, s.total - s.failed - s.skipped);
  return s;
}

/**
 * Reads a JUnit XML report (`<testsuites>` or a bare `<testsuite>`, nested suites allowed), in the
 * calling thread. Counts come from the testcase elements: `<failure>` and `<error>` both count as
 * failed, `<skipped/>` as skipped. DOCTYPEs are refused and entities are never expanded.
 * @param {string} xml
 * @param {number} [maxBytes]
 * @returns {JUnitSummary}
 */
export function parseJUnit(xml, maxBytes = MAX_JUNIT_BYTES) {
  if (Buffer.byteLength(xml, 'utf8') > maxBytes) throw new JUnitError(`report is larger than ${maxBytes} bytes`);
  if (/<!DOCTYPE/i.test(xml)) throw new JUnitError('report has a DOCTYPE declaration; refused (entity expansion)');
  const valid = XMLValidator.validate(xml);
  if (valid !== true) throw new JUnitError(`malformed XML at line ${valid.err.line}, column ${valid.err.col}: ${valid.err.msg}`);
  /** @type {Node} */
  let doc;
  try {
    doc = parser.parse(xml);
  } catch (err) {
    throw new JUnitError(`malformed XML: ${/** @type {Error} */ (err).message}`);
  }
  const top = doc.testsuites;
  const roots = top !== undefined ? children({ t: [top] }, 't') : children(doc, 'testsuite');
  if (top === undefined && roots.length === 0) {
    const root = Object.keys(doc).find((k) => !k.startsWith('?'));
    throw new JUnitError(`not a JUnit report: root element is <${root ?? 'none'}>, expected <testsuites> or <testsuite>`);
  }
  /** @type {Acc} */
  const acc = { summary: { total: 0, passed: 0, failed: 0, skipped: 0, failures: [] }, sawCase: false };
  walkSuites(roots, acc);
  if (acc.sawCase) return acc.summary;
  const topNode = roots[0];
  const counted = top !== undefined && topNode && attr(topNode, 'tests') !== undefined ? [topNode] : roots.flatMap((r) => (top !== undefined ? children(r, 'testsuite') : [r]));
  return fromAttributes(counted);
}
