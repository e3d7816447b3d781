import { isAlias, isMap, isPair, isScalar, isSeq, LineCounter, Parser, parseDocument, type Document } from 'yaml';
import type { z } from 'zod';
import { Buildspec, PHASE_NAMES } from './buildspec-schema.js';

export * from './buildspec-schema.js';

export const MAX_BUILDSPEC_BYTES = 1024 * 1024;
export const MAX_ALIAS_COUNT = 100;
export const MAX_NESTING_DEPTH = 64;

export interface BuildspecIssue {
  /** Dotted path with list indexes: `phases.build.commands[2]`; `(root)` for the document. */
  path: string;
  message: string;
}

/** The buildspec cannot be run as written; the message names the field. */
export class BuildspecError extends Error {
  override name = 'BuildspecError';
  constructor(
    message: string,
    readonly issues: BuildspecIssue[] = [{ path: '(root)', message }],
  ) {
    super(message);
  }
}

/** `['phases', 'build', 'commands', 2]` → `phases.build.commands[2]`; odd keys (ARNs) are quoted. */
export function formatPath(path: ReadonlyArray<PropertyKey>): string {
  let out = '';
  for (const seg of path) {
    if (typeof seg === 'number') out += `[${seg}]`;
    else if (/^[A-Za-z_][A-Za-z0-9_-]*$/.test(String(seg))) out += out ? `.${String(seg)}` : String(seg);
    else out += `[${JSON.stringify(String(seg))}]`;
  }
  return out || '(root)';
}

const COLLECTIONS = new Set(['block-map', 'block-seq', 'flow-collection']);

/**
 * Nesting depth of the YAML text, measured on yaml's CST without recursion. Composing a deeply
 * nested document recurses and can exhaust the stack in places that take the process down, so
 * the depth is checked before the document is ever composed.
 */
function cstDepth(text: string, limit: number): number {
  let max = 0;
  for (const token of new Parser().parse(text)) {
    const stack: Array<[unknown, number]> = [[token, 0]];
    while (stack.length > 0) {
      const [node, depth] = stack.pop()!;
      if (node === null || typeof node !== 'object') continue;
      const d = COLLECTIONS.has((node as { type?: string }).type ?? '') ? depth + 1 : depth;
      if (d > limit) return d;
      max = Math.max(max, d);
      for (const child of Object.values(node)) if (child !== null && typeof child === 'object') stack.push([child, d]);
    }
  }
  return max;
}

/** Depth of the composed value; aliases can deepen it (or make it cyclic), which this also catches. */
function valueDepthExceeds(value: unknown, limit: number): boolean {
  const stack: Array<[unknown, number]> = [[value, 0]];
  while (stack.length > 0) {
    const [node, depth] = stack.pop()!;
    if (node === null || typeof node !== 'object') continue;
    if (depth + 1 > limit) return true;
    for (const child of Object.values(node)) stack.push([child, depth + 1]);
  }
  return false;
}

/** The tags a buildspec may write: the failsafe schema's (`!!str`, `!!seq`, `!!map`) and `!` (plain text). */
const TEXT_TAGS = new Set(['!', 'tag:yaml.org,2002:str', 'tag:yaml.org,2002:seq', 'tag:yaml.org,2002:map']);

/**
 * The first node written with a tag other than TEXT_TAGS, and where: `!vault x` (a tag yaml cannot
 * resolve) would be read as the text `x`, and run; `!!int 5` as `5`; `!!binary`, `!!timestamp`, `!!set`
 * would become values no field takes. None is what the buildspec's author meant: refused, naming it.
 */
function taggedNode(doc: Document): { path: string; tag: string } | undefined {
  const stack: Array<{ node: unknown; path: PropertyKey[] }> = [{ node: doc.contents, path: [] }];
  while (stack.length > 0) {
    const { node, path } = stack.pop()!;
    if (isAlias(node) || node === null || typeof node !== 'object') continue;
    const tag = (node as { tag?: unknown }).tag;
    if (typeof tag === 'string' && !TEXT_TAGS.has(tag)) return { path: formatPath(path), tag: tag.replace(/^tag:yaml\.org,2002:/, '!!') };
    if (isMap(node)) {
      for (const pair of node.items) {
        const key = isScalar(pair.key) ? String(pair.key.value) : '?';
        stack.push({ node: pair.value, path: [...path, key] }, { node: pair.key, path: [...path, key] });
      }
    } else if (isSeq(node)) node.items.forEach((item, i) => stack.push({ node: item, path: [...path, i] }));
    else if (isPair(node)) stack.push({ node: node.value, path });
  }
  return undefined;
}

/**
 * Where the composed value has a `__proto__` key: kept by yaml as an own key, it would be lost when
 * validated into a new object (setting `__proto__` sets its prototype), and with it a report group
 * or an environment variable, silently.
 */
function protoKeyPath(value: unknown): string | undefined {
  const stack: Array<{ node: unknown; path: PropertyKey[] }> = [{ node: value, path: [] }];
  while (stack.length > 0) {
    const { node, path } = stack.pop()!;
    if (node === null || typeof node !== 'object') continue;
    if (!Array.isArray(node) && Object.hasOwn(node, '__proto__')) return formatPath([...path, '__proto__']);
    for (const [key, child] of Object.entries(node)) stack.push({ node: child, path: [...path, Array.isArray(node) ? Number(key) : key] });
  }
  return undefined;
}

function readYaml(text: string): { value: unknown; doc: Document } {
  if (Buffer.byteLength(text, 'utf8') > MAX_BUILDSPEC_BYTES) throw new BuildspecError(`buildspec is larger than ${MAX_BUILDSPEC_BYTES} bytes`);
  if (cstDepth(text, MAX_NESTING_DEPTH) > MAX_NESTING_DEPTH) throw new BuildspecError(`buildspec nests deeper than ${MAX_NESTING_DEPTH} levels`);
  const lineCounter = new LineCounter();
  // merge: `<<: *defaults` merge keys, which CodeBuild's YAML 1.1 parser takes and buildspecs use.
  const doc = parseDocument(text, { schema: 'failsafe', uniqueKeys: true, merge: true, lineCounter, prettyErrors: true });
  const first = doc.errors[0];
  if (first) throw new BuildspecError(`invalid YAML: ${first.message.split('\n')[0]}`);
  const tagged = taggedNode(doc);
  if (tagged) {
    const message = `the YAML tag ${tagged.tag} is not supported (every value is read as text); remove it, or quote the value if "${tagged.tag}" is part of the text`;
    throw new BuildspecError(`${tagged.path}: ${message}`, [{ path: tagged.path, message }]);
  }
  // Anything else yaml warns of is not read as written either (as the control plane reads pipeline definitions).
  const warning = doc.warnings[0];
  if (warning) throw new BuildspecError(`invalid YAML: ${warning.message.split('\n')[0]!.replace(/:$/, '')}`);
  let value: unknown;
  try {
    value = doc.toJS({ maxAliasCount: MAX_ALIAS_COUNT });
  } catch (err) {
    throw new BuildspecError(`invalid YAML: ${(err as Error).message}`);
  }
  if (valueDepthExceeds(value, MAX_NESTING_DEPTH)) throw new BuildspecError(`buildspec nests deeper than ${MAX_NESTING_DEPTH} levels`);
  const proto = protoKeyPath(value);
  if (proto) {
    const message = 'the key __proto__ is not allowed (it would be lost, not read)';
    throw new BuildspecError(`${proto}: ${message}`, [{ path: proto, message }]);
  }
  return { value, doc };
}

/** What YAML 1.2 (and CodeBuild's YAML 1.1) reads as null when it is written plain, unquoted. */
const NULL_TEXT = /^(?:~|null|Null|NULL)$/;

/**
 * Command items that YAML reads as null (`- ~`, `- null`, an empty `-`): the failsafe schema hands
 * them on as the text "~", "null" or "", which would run as a command (`~` is a directory, exit 126)
 * or as nothing. Quoted, `"~"` and `"null"` are strings, and stay commands.
 */
function nullCommands(doc: Document): BuildspecIssue[] {
  const issues: BuildspecIssue[] = [];
  for (const phase of PHASE_NAMES) {
    for (const block of ['commands', 'finally'] as const) {
      const list = doc.getIn(['phases', phase, block], true);
      if (!isSeq(list)) continue;
      list.items.forEach((item, index) => {
        const node = isAlias(item) ? item.resolve(doc) : item;
        if (!isScalar(node) || node.type !== 'PLAIN') return;
        const written = typeof node.source === 'string' ? node.source : String(node.value ?? '');
        if (written !== '' && !NULL_TEXT.test(written)) return;
        const what = written === '' ? 'an empty item' : written;
        issues.push({ path: formatPath(['phases', phase, block, index]), message: `expected a command string, got a YAML null (${what})` });
      });
    }
  }
  return issues;
}

function issueFrom(issue: z.core.$ZodIssue): BuildspecIssue {
  if (issue.code === 'unrecognized_keys') {
    const keys = issue.keys.map((k) => `"${k}"`).join(', ');
    return { path: formatPath(issue.path), message: `unknown key${issue.keys.length > 1 ? 's' : ''} ${keys}` };
  }
  return { path: formatPath(issue.path), message: issue.message };
}

/** Parses and validates a buildspec (version 0.2). Throws BuildspecError naming the offending field. */
export function parseBuildspec(text: string): Buildspec {
  const { value, doc } = readYaml(text);
  if (value === null || value === undefined || value === '') throw new BuildspecError('buildspec is empty');
  if (typeof value !== 'object' || Array.isArray(value)) throw new BuildspecError('buildspec must be a YAML mapping');
  const version = (value as Record<string, unknown>).version;
  if (version === undefined) throw new BuildspecError('version: required (must be 0.2)', [{ path: 'version', message: 'required (must be 0.2)' }]);
  const result = Buildspec.safeParse(value);
  const nulls = nullCommands(doc);
  if (result.success && nulls.length === 0) return result.data;
  // The version decides how everything else reads, so its issue comes first.
  const issues = [...(result.success ? [] : result.error.issues.map(issueFrom)), ...nulls].sort((a, b) => Number(b.path === 'version') - Number(a.path === 'version'));
  throw new BuildspecError(issues.map((i) => `${i.path}: ${i.message}`).join('; '), issues);
}

/** Features the buildspec uses that Conveyor cannot honour yet; a build that uses any must fail, saying so. */
export function unsupportedFeatures(spec: Buildspec): string[] {
  const out: string[] = [];
  const names = (rec: Record<string, unknown> | undefined) => Object.keys(rec ?? {}).join(', ');
  if (spec['run-as'] !== undefined) out.push('run-as: running commands as another Linux user is not supported');
  const env = spec.env;
  if (env?.shell === 'powershell.exe' || env?.shell === 'cmd.exe') out.push(`env.shell: ${env.shell} (Windows) is not supported; use bash or /bin/sh`);
  if (env?.['parameter-store'] && names(env['parameter-store'])) out.push(`env.parameter-store: Systems Manager parameters are not supported yet (${names(env['parameter-store'])})`);
  if (env?.['secrets-manager'] && names(env['secrets-manager'])) out.push(`env.secrets-manager: Secrets Manager secrets are not supported yet (${names(env['secrets-manager'])})`);
  if (env?.['git-credential-helper'] === true) out.push('env.git-credential-helper: yes is not supported');
  if (spec.proxy !== undefined) out.push('proxy: builds behind an explicit proxy server are not supported');
  if (spec.batch !== undefined) out.push('batch: batch builds are not supported');
  if (spec.cache !== undefined) out.push('cache: build caching is not supported yet');
  for (const phase of PHASE_NAMES) {
    if (spec.phases[phase]?.['run-as'] !== undefined) out.push(`phases.${phase}.run-as: running commands as another Linux user is not supported`);
  }
  if (spec.artifacts?.['secondary-artifacts'] !== undefined) out.push('artifacts.secondary-artifacts: secondary artifacts are not supported yet');
  for (const [group, report] of Object.entries(spec.reports ?? {})) {
    const format = report['file-format'] ?? 'JUNITXML';
    if (format !== 'JUNITXML') out.push(`${formatPath(['reports', group, 'file-format'])}: ${format} is not supported yet (JUNITXML only)`);
  }
  return out;
}

/** Things in the buildspec that run differently here than on CodeBuild, worth a line in the build log. */
export function notices(spec: Buildspec): string[] {
  const out: string[] = [];
  const runtimes = spec.phases.install?.['runtime-versions'];
  if (runtimes && Object.keys(runtimes).length > 0) {
    const list = Object.entries(runtimes).map(([k, v]) => `${k}: ${v}`).join(', ');
    out.push(`phases.install.runtime-versions (${list}) ignored: the local executor uses the tools installed on the host`);
  }
  for (const name of Object.keys(spec.env?.variables ?? {})) {
    if (name.startsWith('CODEBUILD_')) out.push(`env.variables.${name}: names starting CODEBUILD_ are reserved; the built-in value is used`);
  }
  for (const name of spec.env?.['exported-variables'] ?? []) {
    if (name.startsWith('AWS_')) out.push(`env.exported-variables: ${name} is not exported (variables starting AWS_ cannot be exported)`);
  }
  if (spec.artifacts?.name !== undefined) out.push('artifacts.name ignored: Conveyor names artifacts by run, stage and attempt');
  if (spec.artifacts?.['s3-prefix'] !== undefined) out.push('artifacts.s3-prefix ignored: the artifact store decides where artifacts go');
  return out;
}
