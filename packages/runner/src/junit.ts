import { XMLParser, XMLValidator } from 'fast-xml-parser';

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

/** The report is not JUnit XML we can read. */
export class JUnitError extends Error {
  override name = 'JUnitError';
}

export const MAX_JUNIT_BYTES = 50 * 1024 * 1024;
const MAX_FAILURES = 1000;
const MAX_MESSAGE = 2000;

type Node = Record<string, unknown>;

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

const ENTITIES: Record<string, string> = { lt: '<', gt: '>', amp: '&', quot: '"', apos: "'" };

function decodeEntities(s: string): string {
  return s.replace(/&(#x[0-9a-fA-F]+|#[0-9]+|lt|gt|amp|quot|apos);/g, (whole, ent: string) => {
    if (ent.startsWith('#x')) return safeCodePoint(Number.parseInt(ent.slice(2), 16)) ?? whole;
    if (ent.startsWith('#')) return safeCodePoint(Number.parseInt(ent.slice(1), 10)) ?? whole;
    return ENTITIES[ent] ?? whole;
  });
}

function safeCodePoint(n: number): string | undefined {
  return Number.isInteger(n) && n >= 0 && n <= 0x10ffff ? String.fromCodePoint(n) : undefined;
}

function attr(node: Node, name: string): string | undefined {
  const v = node[`@_${name}`];
  return typeof v === 'string' ? decodeEntities(v) : undefined;
}

function children(node: Node, name: string): Node[] {
  const v = node[name];
  if (!Array.isArray(v)) return [];
  // `<skipped/>` parses as "", `<failure>text</failure>` as a string: normalise to objects.
  return v.map((c) => (c !== null && typeof c === 'object' ? (c as Node) : { '#text': String(c) }));
}

function messageOf(problem: Node): string | undefined {
  const text = attr(problem, 'message') ?? (typeof problem['#text'] === 'string' ? decodeEntities(problem['#text']) : undefined);
  if (text === undefined || text === '') return undefined;
  return text.length > MAX_MESSAGE ? `${text.slice(0, MAX_MESSAGE)}…` : text;
}

interface Acc {
  summary: JUnitSummary;
  sawCase: boolean;
}

function countCase(tc: Node, suite: string, acc: Acc): void {
  const s = acc.summary;
  acc.sawCase = true;
  s.total += 1;
  const problem = children(tc, 'failure')[0] ?? children(tc, 'error')[0];
  if (problem) {
    s.failed += 1;
    if (s.failures.length < MAX_FAILURES) {
      const message = messageOf(problem);
      s.failures.push({ suite: attr(tc, 'classname') ?? suite, name: attr(tc, 'name') ?? '(unnamed)', ...(message ? { message } : {}) });
    }
  } else if (tc.skipped !== undefined) s.skipped += 1;
  else s.passed += 1;
}

/** Walks suites (nested to any depth the parser allows) without recursion. */
function walkSuites(roots: Node[], acc: Acc): void {
  const stack = roots.map((node) => ({ node, name: attr(node, 'name') ?? '' }));
  while (stack.length > 0) {
    const { node, name } = stack.pop()!;
    for (const tc of children(node, 'testcase')) countCase(tc, name, acc);
    for (const child of children(node, 'testsuite')) stack.push({ node: child, name: attr(child, 'name') ?? name });
  }
}

function intAttr(node: Node, name: string): number {
  const n = Number.parseInt(attr(node, name) ?? '0', 10);
  return Number.isFinite(n) && n > 0 ? n : 0;
}

/** Only when a report has no testcase elements at all do the suites' own counters speak. */
function fromAttributes(nodes: Node[]): JUnitSummary {
  const s: JUnitSummary = { total: 0, passed: 0, failed: 0, skipped: 0, failures: [] };
  for (const n of nodes) {
    s.total += intAttr(n, 'tests');
    s.failed += intAttr(n, 'failures') + intAttr(n, 'errors');
    s.skipped += intAttr(n, 'skipped') + intAttr(n, 'disabled');
  }
  s.passed = Math.max(0, s.total - s.failed - s.skipped);
  return s;
}

/**
 * Reads a JUnit XML report (`<testsuites>` or a bare `<testsuite>`, nested suites allowed).
 * Counts come from the testcase elements: `<failure>` and `<error>` both count as failed,
 * `<skipped/>` as skipped. DOCTYPEs are refused and entities are never expanded.
 */
export function parseJUnit(xml: string, maxBytes = MAX_JUNIT_BYTES): JUnitSummary {
  if (Buffer.byteLength(xml, 'utf8') > maxBytes) throw new JUnitError(`report is larger than ${maxBytes} bytes`);
  if (/<!DOCTYPE/i.test(xml)) throw new JUnitError('report has a DOCTYPE declaration; refused (entity expansion)');
  const valid = XMLValidator.validate(xml);
  if (valid !== true) throw new JUnitError(`malformed XML at line ${valid.err.line}, column ${valid.err.col}: ${valid.err.msg}`);
  let doc: Node;
  try {
    doc = parser.parse(xml) as Node;
  } catch (err) {
    throw new JUnitError(`malformed XML: ${(err as Error).message}`);
  }
  const top = doc.testsuites;
  const roots = top !== undefined ? children({ t: [top] }, 't') : children(doc, 'testsuite');
  if (top === undefined && roots.length === 0) {
    const root = Object.keys(doc).find((k) => !k.startsWith('?'));
    throw new JUnitError(`not a JUnit report: root element is <${root ?? 'none'}>, expected <testsuites> or <testsuite>`);
  }
  const acc: Acc = { summary: { total: 0, passed: 0, failed: 0, skipped: 0, failures: [] }, sawCase: false };
  walkSuites(roots, acc);
  if (acc.sawCase) return acc.summary;
  const topNode = roots[0];
  const counted = top !== undefined && topNode && attr(topNode, 'tests') !== undefined ? [topNode] : roots.flatMap((r) => (top !== undefined ? children(r, 'testsuite') : [r]));
  return fromAttributes(counted);
}
