import { describe, expect, it } from 'vitest';
import { BuildspecError, formatPath, notices, parseBuildspec, unsupportedFeatures } from './buildspec.js';

const FULL = `
version: 0.2
run-as: builder
env:
  shell: bash
  variables:
    JAVA_HOME: "/usr/lib/jvm/java-8-openjdk-amd64"
    RETRIES: 3
    RATIO: 1.10
    DEBUG: yes
    CODEBUILD_X: nope
  parameter-store:
    LOGIN_PASSWORD: /CodeBuild/dockerLoginPassword
  secrets-manager:
    TOKEN: prod/token:api-key
  exported-variables:
    - IMAGE_TAG
    - AWS_SECRET
  git-credential-helper: yes
proxy:
  upload-artifacts: no
  logs: yes
batch:
  fast-fail: false
  build-list:
    - identifier: linux
phases:
  install:
    run-as: root
    on-failure: ABORT
    runtime-versions:
      nodejs: 20
      python: 3.x
    commands:
      - npm ci
    finally:
      - echo install done
  pre_build:
    on-failure: CONTINUE
    commands:
      - echo pre
  build:
    on-failure: RETRY-2-timed out
    commands:
      - npm run build
      - 123
      - true
  post_build:
    commands:
      - echo done
reports:
  arn:aws:codebuild:us-east-1:123456789012:report-group/unit:
    files:
      - "**/*"
    base-directory: target/tests/reports
    discard-paths: no
  cucumber:
    files: cucumber/report.json
    file-format: cucumberjson
artifacts:
  files:
    - target/app.jar
  name: app-$(date +%Y)
  discard-paths: yes
  base-directory: target
  exclude-paths:
    - "**/*.tmp"
  enable-symlinks: no
  s3-prefix: builds
  secondary-artifacts:
    docs:
      files: ["docs/**/*"]
cache:
  paths:
    - /root/.m2/**/*
  key: m2
`;

function errorOf(text: string): BuildspecError {
  try {
    parseBuildspec(text);
  } catch (err) {
    if (err instanceof BuildspecError) return err;
    throw err;
  }
  throw new Error('expected parseBuildspec to throw');
}

const spec = (phases: string, extra = '') => `version: 0.2\n${extra}phases:\n${phases}`;

describe('parseBuildspec: accepts what CodeBuild accepts', () => {
  it('reads every top-level key CodeBuild defines', () => {
    const s = parseBuildspec(FULL);
    expect(s.version).toBe('0.2');
    expect(s['run-as']).toBe('builder');
    expect(s.env?.['exported-variables']).toEqual(['IMAGE_TAG', 'AWS_SECRET']);
    expect(s.env?.['git-credential-helper']).toBe(true);
    expect(s.proxy).toEqual({ 'upload-artifacts': false, logs: true });
    expect(s.phases.install?.['runtime-versions']).toEqual({ nodejs: '20', python: '3.x' });
    expect(s.phases.build?.['on-failure']).toBe('RETRY-2-timed out');
    expect(s.reports?.cucumber).toEqual({ files: ['cucumber/report.json'], 'file-format': 'CUCUMBERJSON' });
    expect(s.reports?.['arn:aws:codebuild:us-east-1:123456789012:report-group/unit']?.['discard-paths']).toBe(false);
    expect(s.artifacts).toMatchObject({ files: ['target/app.jar'], 'discard-paths': true, 'base-directory': 'target', 'exclude-paths': ['**/*.tmp'], 'enable-symlinks': false });
    expect(s.artifacts?.['secondary-artifacts']?.docs?.files).toEqual(['docs/**/*']);
    expect(s.cache).toEqual({ paths: ['/root/.m2/**/*'], key: 'm2' });
  });

  it('coerces YAML scalars in commands and variables to the strings written, as CodeBuild does', () => {
    const s = parseBuildspec(FULL);
    expect(s.phases.build?.commands).toEqual(['npm run build', '123', 'true']);
    expect(s.env?.variables).toMatchObject({ RETRIES: '3', RATIO: '1.10', DEBUG: 'yes' });
  });

  it('accepts version as a number or a string, and a minimal spec', () => {
    expect(parseBuildspec('version: "0.2"\nphases:\n  build:\n    commands: [make]\n').phases.build?.commands).toEqual(['make']);
    expect(parseBuildspec('version: 0.2\nphases:\n  post_build:\n    finally: [make]\n    commands: []\n').phases.post_build?.finally).toEqual(['make']);
  });

  it('accepts an install phase with runtime-versions only, and quoted "~" or "null" as commands', () => {
    expect(parseBuildspec(spec('  install:\n    runtime-versions:\n      nodejs: 20\n')).phases.install?.['runtime-versions']).toEqual({ nodejs: '20' });
    expect(parseBuildspec(spec('  build:\n    commands: ["~", \'null\', echo ~]\n')).phases.build?.commands).toEqual(['~', 'null', 'echo ~']);
  });

  it('takes YAML merge keys (`<<: *anchor`), as CodeBuild does; a key written beside the merge wins', () => {
    const s = parseBuildspec(
      spec('  pre_build: &strict\n    on-failure: CONTINUE\n    commands: [lint]\n    finally: [cleanup]\n  build:\n    <<: *strict\n    commands: [make]\n'),
    );
    expect(s.phases.build).toMatchObject({ 'on-failure': 'CONTINUE', commands: ['make'], finally: ['cleanup'] });
  });

  it('treats an empty optional key as absent and keeps block scalars whole', () => {
    const s = parseBuildspec(spec('  build:\n    commands:\n      - |\n        if true; then\n          echo multi\n        fi\n    finally:\n'));
    expect(s.phases.build?.finally).toBeUndefined();
    expect(s.phases.build?.commands[0]).toBe('if true; then\n  echo multi\nfi\n');
  });
});

describe('parseBuildspec: every error names its field', () => {
  const cases: Array<[string, string, RegExp]> = [
    ['a command that YAML read as a mapping', spec('  build:\n    commands:\n      - echo a\n      - echo b\n      - echo key: value\n'), /^phases\.build\.commands\[2\]: expected a string \(a command containing ": " must be quoted\)$/],
    ['a command that is a list', spec('  build:\n    commands:\n      - [a, b]\n'), /^phases\.build\.commands\[0\]: expected a string$/],
    ['a missing commands list', spec('  build:\n    finally: [x]\n'), /phases\.build\.commands: required: a list of commands/],
    ['an unknown phase key', spec('  build:\n    comands: [x]\n    commands: [x]\n'), /phases\.build: unknown key "comands"/],
    ['an unknown phase', spec('  test:\n    commands: [x]\n'), /phases: unknown key "test"/],
    ['an unknown top-level key', spec('  build:\n    commands: [x]\n', 'artefacts:\n  files: [a]\n'), /\(root\): unknown key "artefacts"/],
    ['runtime-versions outside install', spec('  build:\n    runtime-versions: {nodejs: 20}\n    commands: [x]\n'), /phases\.build: unknown key "runtime-versions"/],
    ['a nested variable value', spec('  build:\n    commands: [x]\n', 'env:\n  variables:\n    A:\n      b: c\n'), /env\.variables\.A: expected a string value/],
    ['a bad shell', spec('  build:\n    commands: [x]\n', 'env:\n  shell: zsh\n'), /env\.shell: expected bash or \/bin\/sh/],
    ['a bad exported variable name', spec('  build:\n    commands: [x]\n', 'env:\n  exported-variables: ["A-B"]\n'), /env\.exported-variables\[0\]: not a valid shell variable name/],
    ['a bad yes/no', spec('  build:\n    commands: [x]\n', 'artifacts:\n  files: [a]\n  discard-paths: maybe\n'), /artifacts\.discard-paths: expected yes or no/],
    ['artifacts without files', spec('  build:\n    commands: [x]\n', 'artifacts:\n  name: x\n'), /artifacts\.files: required: a list of paths/],
    ['a bad report format', spec('  build:\n    commands: [x]\n', 'reports:\n  unit:\n    files: [a]\n    file-format: XUNIT\n'), /reports\.unit\.file-format: expected one of JUNITXML/],
    ['a bad on-failure', spec('  build:\n    on-failure: IGNORE\n    commands: [x]\n'), /phases\.build\.on-failure: expected ABORT, CONTINUE, RETRY/],
    ['a bad retry regex', spec('  build:\n    on-failure: RETRY-2-(oops\n    commands: [x]\n'), /phases\.build\.on-failure: invalid regular expression "\(oops"/],
    ['a retry count over 100', spec('  build:\n    on-failure: RETRY-101\n    commands: [x]\n'), /phases\.build\.on-failure: retry count must be between 0 and 100/],
    ['missing phases', 'version: 0.2\nenv:\n  variables: {A: b}\n', /phases: required: a mapping of phases/],
    ['a missing version', 'phases:\n  build:\n    commands: [x]\n', /^version: required/],
    ['an empty phase', spec('  build:\n  post_build:\n    commands: [x]\n'), /^phases\.build: expected a mapping with commands \(the phase is empty\)$/],
    ['an empty install phase', spec('  install:\n'), /^phases\.install: expected a mapping with commands, finally or runtime-versions \(the phase is empty\)$/],
    ['a phase with nothing to run', spec('  build:\n    commands: []\n'), /^phases\.build: runs nothing: expected at least one command in commands or finally$/],
    ['an install phase with nothing to run', spec('  install:\n    on-failure: ABORT\n'), /^phases\.install: runs nothing: expected at least one command in commands or finally, or runtime-versions$/],
    ['no phase at all', 'version: 0.2\nphases: {}\n', /^phases: expected at least one phase \(install, pre_build, build or post_build\)$/],
    ['a YAML null (~) as a command', spec('  build:\n    commands:\n      - echo a\n      - ~\n'), /^phases\.build\.commands\[1\]: expected a command string, got a YAML null \(~\)$/],
    ['a YAML null (null) in finally', spec('  build:\n    commands: [x]\n    finally:\n      - null\n      - NULL\n'), /^phases\.build\.finally\[0\]: expected a command string, got a YAML null \(null\); phases\.build\.finally\[1\]: expected a command string, got a YAML null \(NULL\)$/],
    ['an empty list item as a command', spec('  pre_build:\n    commands:\n      -\n      - echo b\n'), /^phases\.pre_build\.commands\[0\]: expected a command string, got a YAML null \(an empty item\)$/],
    ['a YAML null through an alias', spec('  build:\n    commands: [x, *n]\n', 'env:\n  variables:\n    N: &n ~\n'), /phases\.build\.commands\[1\]: expected a command string, got a YAML null/],
    ['an unknown version', 'version: 0.3\nphases: {}\n', /^version: must be 0\.2, got "0\.3"/],
    // A tag yaml cannot resolve is a warning only: the value would be read as the text after it, and run.
    ['a command with an unknown YAML tag', spec('  build:\n    commands:\n      - echo a\n      - !vault x\n'), /^phases\.build\.commands\[1\]: the YAML tag !vault is not supported \(every value is read as text\); remove it, or quote the value if "!vault" is part of the text$/],
    ['a variable with a YAML 1.1 tag', spec('  build:\n    commands: [x]\n', 'env:\n  variables:\n    RETRIES: !!int 3\n'), /^env\.variables\.RETRIES: the YAML tag !!int is not supported/],
    ['a key with a tag', spec('  build:\n    commands: [x]\n', 'env:\n  variables:\n    !secret TOKEN: x\n'), /^env\.variables\.TOKEN: the YAML tag !secret is not supported/],
    ['a tagged value yaml would turn into something else', spec('  build:\n    commands: [!!binary aGk=]\n'), /^phases\.build\.commands\[0\]: the YAML tag !!binary is not supported/],
    // yaml keeps `__proto__` as an own key, which validation into a new object would drop, silently.
    ['a variable named __proto__', spec('  build:\n    commands: [x]\n', 'env:\n  variables:\n    __proto__: x\n    A: b\n'), /^env\.variables\.__proto__: the key __proto__ is not allowed \(it would be lost, not read\)$/],
    ['a report group named __proto__', spec('  build:\n    commands: [x]\n', 'reports:\n  __proto__:\n    files: [r.xml]\n'), /^reports\.__proto__: the key __proto__ is not allowed/],
  ];
  it.each(cases)('%s', (_label, text, expected) => {
    const err = errorOf(text);
    expect(err.message).toMatch(expected);
    expect(err.issues.length).toBeGreaterThan(0);
  });

  it('refuses version 0.1 with a clear message, before anything else', () => {
    const err = errorOf('version: 0.1\nphases:\n  build:\n    commands: [{a: b}]\n');
    expect(err.issues[0]).toEqual({ path: 'version', message: expect.stringMatching(/version 0\.1 is not supported/) });
  });

  it('takes the tags of plain text (!!str, !, !!seq, !!map) as the text, list or mapping they are', () => {
    const parsed = parseBuildspec(spec('  build:\n    commands: !!seq [!!str 123, ! echo b]\n', 'env: !!map\n  variables:\n    A: !!str yes\n'));
    expect(parsed.phases.build?.commands).toEqual(['123', 'echo b']);
    expect(parsed.env?.variables).toEqual({ A: 'yes' });
  });

  it('reports YAML syntax errors with their line', () => {
    expect(errorOf('version: 0.2\nphases:\n  build: [unclosed\n').message).toMatch(/^invalid YAML: .*line \d+/);
    expect(errorOf('version: 0.2\nversion: 0.2\nphases: {}\n').message).toMatch(/unique/);
  });

  it('refuses documents that are empty, not a mapping, or several', () => {
    expect(errorOf('').message).toBe('buildspec is empty');
    expect(errorOf('- a\n- b\n').message).toBe('buildspec must be a YAML mapping');
    expect(errorOf('version: 0.2\nphases: {}\n---\nversion: 0.2\n').message).toMatch(/invalid YAML/);
  });
});

describe('parseBuildspec: resource limits', () => {
  it('refuses an alias bomb', () => {
    const lines = ['a0: &a0 [x, x, x, x, x, x, x, x, x, x]'];
    for (let i = 1; i < 12; i += 1) lines.push(`a${i}: &a${i} [${Array(10).fill(`*a${i - 1}`).join(', ')}]`);
    const err = errorOf(`version: 0.2\nphases: {}\n${lines.join('\n')}\n`);
    expect(err.message).toMatch(/alias/i);
  });

  it('refuses deep flow nesting and deep block nesting without crashing', () => {
    expect(errorOf(`version: 0.2\nphases: {}\nx: ${'['.repeat(20_000)}${']'.repeat(20_000)}\n`).message).toMatch(/nests deeper than 64/);
    let block = 'version: 0.2\nphases: {}\nx:\n';
    for (let i = 1; i < 80; i += 1) block += `${' '.repeat(i)}k:\n`;
    expect(errorOf(block).message).toMatch(/nests deeper than 64/);
    expect(errorOf(`version: 0.2\nphases: {}\nx:\n  ${'- '.repeat(20_000)}y\n`).message).toMatch(/nests deeper than 64/);
  });

  it('refuses a self-referencing alias', () => {
    expect(() => parseBuildspec('version: 0.2\nphases: {}\nx: &a [*a]\n')).toThrow(BuildspecError);
  });

  it('refuses text over 1 MiB', () => {
    expect(errorOf(`version: 0.2\nphases: {}\n#${'x'.repeat(1024 * 1024)}\n`).message).toMatch(/larger than 1048576 bytes/);
  });
});

describe('unsupportedFeatures and notices', () => {
  it('lists every feature Conveyor cannot honour yet', () => {
    const list = unsupportedFeatures(parseBuildspec(FULL));
    const fields = list.map((l) => l.split(':')[0]);
    expect(fields).toEqual([
      'run-as', 'env.parameter-store', 'env.secrets-manager', 'env.git-credential-helper', 'proxy', 'batch', 'cache',
      'phases.install.run-as', 'artifacts.secondary-artifacts', 'reports.cucumber.file-format',
    ]);
    expect(list.find((l) => l.startsWith('env.parameter-store'))).toMatch(/LOGIN_PASSWORD/);
  });

  it('lists nothing for a plain buildspec, and parseBuildspec does not throw for unsupported features', () => {
    expect(unsupportedFeatures(parseBuildspec(spec('  build:\n    commands: [make]\n', 'env:\n  git-credential-helper: no\n')))).toEqual([]);
  });

  it('reports runtime-versions, reserved names and ignored artifact naming as notices', () => {
    const list = notices(parseBuildspec(FULL));
    expect(list[0]).toMatch(/^phases\.install\.runtime-versions \(nodejs: 20, python: 3\.x\) ignored/);
    expect(list.some((l) => l.startsWith('env.variables.CODEBUILD_X'))).toBe(true);
    expect(list.some((l) => l.includes('AWS_SECRET is not exported'))).toBe(true);
    expect(list.some((l) => l.startsWith('artifacts.name'))).toBe(true);
  });
});

describe('formatPath', () => {
  it('uses dots, list indexes, and quotes for keys that are not identifiers', () => {
    expect(formatPath(['phases', 'build', 'commands', 2])).toBe('phases.build.commands[2]');
    expect(formatPath(['reports', 'arn:aws:x/y', 'files'])).toBe('reports["arn:aws:x/y"].files');
    expect(formatPath([])).toBe('(root)');
  });
});
