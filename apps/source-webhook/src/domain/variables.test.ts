import { describe, expect, it } from 'vitest';
import { PipelineDefinition, StageJob, stageResultOf, type Run, type StageResult } from '@conveyor/contracts';
import { createRun, pendingJobs, pendingWork, step } from './state-machine.js';
import { runVariables, variableIssues } from './variables.js';

const SHA = 'a'.repeat(40);
const ART = { key: 'runs/r/Source-1.tar', sha256: 'b'.repeat(64), bytes: 10 };
const BUILD_ART = { key: 'runs/r/Build-1.tar', sha256: 'c'.repeat(64), bytes: 20 };
const t = (s: number) => new Date(Date.UTC(2026, 0, 1, 0, 0, s));

const definitionWith = (stages: unknown[], variables?: unknown[]) =>
  PipelineDefinition.parse({ name: 'hello', source: { provider: 'generic', repository: 'file:///tmp/repo', branch: 'main' }, stages, ...(variables ? { variables } : {}) });

const STAGES = [
  { name: 'Build', type: 'build' },
  { name: 'Test', type: 'test', env: { variables: { IMAGE: 'app:#{Build.APP_VERSION}', RUN: '#{codepipeline.PipelineExecutionId}', PLAIN: 'no #{ reference here' } } },
  {
    name: 'Deploy',
    type: 'deploy',
    target: { kind: 'local', command: 'node server.js', env: { RELEASE: '#{Build.APP_VERSION}-#{Source.CommitId}', BRANCH: '#{Source.BranchName}', SUITE: '#{Test.SUITE}' } },
  },
];

function result(job: StageJob, output: StageResult['output']): StageResult {
  return stageResultOf(job, { status: 'SUCCEEDED', startedAt: t(1).toISOString(), finishedAt: t(2).toISOString(), output });
}

/** Runs the stages with these outputs, one after another; the run and the jobs it sent. */
function drive(stages: unknown[], outputs: StageResult['output'][], variables?: { declared: unknown[]; given?: Array<{ name: string; value: string }> }): { run: Run; jobs: StageJob[] } {
  const definition = definitionWith(stages, variables?.declared);
  let run = createRun({ id: 'run-00000001', number: 1, definition, trigger: { type: 'manual', ref: 'refs/heads/main' }, ...(variables?.given ? { variables: variables.given } : {}) }, t(0)).run;
  const jobs: StageJob[] = [];
  outputs.forEach((output, n) => {
    const job = pendingJobs(run)[0]!;
    jobs.push(job);
    run = step(run, { type: 'stage-result', result: result(job, output) }, t(10 + n)).run;
  });
  const next = pendingJobs(run)[0];
  if (next) jobs.push(next);
  // Every job built is one its worker takes.
  for (const job of jobs) expect(StageJob.parse(job)).toEqual(job);
  return { run, jobs };
}

describe('variables in stage environments (#{Namespace.Variable})', () => {
  it('resolves run, Source and earlier stages’ exported variables into later stages’ environments', () => {
    const { jobs } = drive(STAGES, [{ commit: SHA, artifact: ART }, { artifact: BUILD_ART, exportedVariables: { APP_VERSION: '1.4.2' } }, { exportedVariables: { SUITE: 'unit' } }]);
    expect(jobs[2]).toMatchObject({ type: 'test', env: { variables: { IMAGE: 'app:1.4.2', RUN: 'run-00000001', PLAIN: 'no #{ reference here' } } });
    expect(jobs[3]).toMatchObject({ type: 'deploy', target: { env: { RELEASE: `1.4.2-${SHA}`, BRANCH: 'main', SUITE: 'unit' } } });
  });

  it('fails the stage, naming the variable and why, when an earlier stage did not export it; later stages are skipped', () => {
    const { run, jobs } = drive(STAGES, [{ commit: SHA, artifact: ART }, { artifact: BUILD_ART }]);
    expect(jobs).toHaveLength(2);
    expect(run.status).toBe('FAILED');
    expect(run.stages.map((s) => s.status)).toEqual(['SUCCEEDED', 'SUCCEEDED', 'FAILED', 'SKIPPED']);
    expect(run.stages[2]!.message).toBe(
      'env.variables.IMAGE: #{Build.APP_VERSION} is not set: stage Build exported no variable APP_VERSION (list it under env.exported-variables in its buildspec)',
    );
  });

  it('fails the stage, naming the field, when a resolved value is longer than an environment value may be', () => {
    const { run } = drive(STAGES, [{ commit: SHA, artifact: ART }, { artifact: BUILD_ART, exportedVariables: { APP_VERSION: 'v'.repeat(40_000) } }]);
    expect(run.stages[2]).toMatchObject({ status: 'FAILED', message: 'env.variables.IMAGE: 40004 characters once its variables are resolved, more than the 32768 allowed' });
  });

  it('gives #{Source.BranchName} as empty for a run of a tag', () => {
    const stages = [{ name: 'Build', type: 'build', env: { variables: { BRANCH: '[#{Source.BranchName}]' } } }];
    const run = createRun({ id: 'run-00000002', number: 1, definition: definitionWith(stages), trigger: { type: 'manual', ref: 'refs/tags/v1' } }, t(0)).run;
    const source = pendingJobs(run)[0]!;
    const next = step(run, { type: 'stage-result', result: result(source, { commit: SHA, artifact: ART }) }, t(10)).run;
    expect(pendingJobs(next)[0]).toMatchObject({ env: { variables: { BRANCH: '[]' } } });
  });

  it('leaves an environment without references as it is', () => {
    const { jobs } = drive([{ name: 'Build', type: 'build', env: { variables: { A: 'x', B: '#{not a reference}' } } }], [{ commit: SHA, artifact: ART }]);
    expect(jobs[1]).toMatchObject({ env: { variables: { A: 'x', B: '#{not a reference}' } } });
  });
});

describe('pipeline-level variables (#{variables.NAME}) and stage namespaces', () => {
  const DECLARED = [{ name: 'REGION', defaultValue: 'eu-west-1', description: 'where to deploy' }, { name: 'TICKET' }, { name: 'TIER', defaultValue: 'web' }];
  const USES = [
    { name: 'Build', type: 'build', namespace: 'BuildVariables', env: { variables: { WHERE: '#{variables.REGION}/#{variables.TIER}' } } },
    { name: 'Deploy', type: 'deploy', target: { kind: 'local', command: 'node server.js', env: { V: '#{BuildVariables.APP_VERSION}', SAME: '#{Build.APP_VERSION}', TICKET: '#{variables.TICKET}' } } },
  ];

  it('gives each run the values it was started with, else the defaults, and resolves them and namespaced exports', () => {
    const { run, jobs } = drive(USES, [{ commit: SHA, artifact: ART }, { artifact: BUILD_ART, exportedVariables: { APP_VERSION: '2.0.0' } }], {
      declared: DECLARED,
      given: [{ name: 'TIER', value: 'api' }, { name: 'TICKET', value: 'OPS-7' }],
    });
    expect(run.variables).toEqual({ REGION: 'eu-west-1', TIER: 'api', TICKET: 'OPS-7' });
    expect(jobs[1]).toMatchObject({ type: 'build', env: { variables: { WHERE: 'eu-west-1/api' } } });
    expect(jobs[2]).toMatchObject({ type: 'deploy', target: { env: { V: '2.0.0', SAME: '2.0.0', TICKET: 'OPS-7' } } });
  });

  it('fails a run that refers to a variable with no default which it was not given (a run from a push) as it is created, saying so', () => {
    const { run, events } = createRun({ id: 'run-00000003', number: 1, definition: definitionWith(USES, DECLARED), trigger: { type: 'webhook', ref: 'refs/heads/main' } }, t(0));
    expect(run.variables).toEqual({ REGION: 'eu-west-1', TIER: 'web' });
    expect(run.status).toBe('FAILED');
    expect(run.stages.map((s) => s.status)).toEqual(['FAILED', 'SKIPPED', 'SKIPPED']);
    expect(run.stages[0]!.message).toBe("#{variables.TICKET} in Deploy's target.env.TICKET has no value: it has no default value, and only a run started by hand can be given one");
    expect(pendingJobs(run)).toEqual([]);
    expect(events.map((e) => e.type)).toEqual(['run.created', 'stage.started', 'stage.finished', 'run.finished']);
  });

  it('does not fail afterwards a run whose Source is under way, whatever its variables: its job is always rebuilt', () => {
    // As a run created before the check at creation (or by a replica without it) may be stored.
    const created = createRun({ id: 'run-00000004', number: 1, definition: definitionWith(USES, DECLARED), trigger: { type: 'manual', ref: 'refs/heads/main' }, variables: [{ name: 'TICKET', value: 'x' }] }, t(0)).run;
    const stored: Run = { ...created, variables: { REGION: 'eu-west-1' } };
    expect(pendingWork(stored)).toEqual({ jobs: [expect.objectContaining({ type: 'source', jobId: 'run-00000004.Source.1' })], unbuildable: [] });
  });

  it('fails the stage, naming the variable, when a stored definition refers to one the run does not have', () => {
    // A definition stored before pipeline variables were checked: the run has none, and the stage says so.
    const stages = [{ name: 'Build', type: 'build', env: { variables: { A: '#{variables.OLD}' } } }];
    const { run } = drive(stages, [{ commit: SHA, artifact: ART }]);
    expect(run.stages[1]).toMatchObject({
      status: 'FAILED',
      message: 'env.variables.A: #{variables.OLD} is not set: the pipeline variable OLD is not declared, or has no default value and was not given when the run was started',
    });
  });

  it('records no variables on the runs of a pipeline that declares none', () => {
    const { run } = drive([{ name: 'Build', type: 'build' }], [{ commit: SHA, artifact: ART }]);
    expect(run).not.toHaveProperty('variables');
  });

  it('resolves only what a stage exported, never what every object has', () => {
    const stages = [{ name: 'Build', type: 'build' }, { name: 'Deploy', type: 'deploy', target: { kind: 'local', command: 'x', env: { A: '#{Build.constructor}' } } }];
    const { run } = drive(stages, [{ commit: SHA, artifact: ART }, { artifact: BUILD_ART, exportedVariables: { X: '1' } }]);
    expect(run.stages[2]).toMatchObject({ status: 'FAILED', message: 'target.env.A: #{Build.constructor} is not set: stage Build exported no variable constructor (list it under env.exported-variables in its buildspec)' });
  });

  it('runVariables: refuses undeclared names and, for a run started by hand, missing values without defaults', () => {
    const def = definitionWith([{ name: 'Build', type: 'build' }], DECLARED);
    expect(runVariables(def, [{ name: 'TICKET', value: 'x' }], true)).toEqual({ variables: { REGION: 'eu-west-1', TIER: 'web', TICKET: 'x' }, issues: [] });
    expect(runVariables(def, [{ name: 'REGON', value: 'x' }], true).issues).toEqual([
      { path: 'body.variables.0.name', message: 'pipeline hello declares no variable REGON' },
      { path: 'body.variables', message: 'no value for TICKET, which has no default value' },
    ]);
    // A run from a push cannot be given values: the one without a default stays unset.
    expect(runVariables(def)).toEqual({ variables: { REGION: 'eu-west-1', TIER: 'web' }, issues: [] });
    expect(runVariables(definitionWith([{ name: 'Build', type: 'build' }]), [{ name: 'A', value: 'x' }]).issues).toEqual([{ path: 'body.variables.0.name', message: 'pipeline hello declares no variable A' }]);
  });

  it('checks pipeline variables and namespaces when a pipeline is defined', () => {
    expect(variableIssues(definitionWith(USES, DECLARED))).toEqual([]);
    const def = definitionWith(
      [
        { name: 'Build', type: 'build', namespace: 'BV', env: { variables: { A: '#{variables.NOPE}', B: '#{BV.X}' } } },
        { name: 'Deploy', type: 'deploy', target: { kind: 'local', command: 'x', env: { C: '#{BV.X}' } } },
      ],
      DECLARED,
    );
    expect(variableIssues(def)).toEqual([
      { path: 'stages.0.env.variables.A', message: '#{variables.NOPE}: no pipeline variable NOPE is declared (under variables)' },
      { path: 'stages.0.env.variables.B', message: '#{BV.X}: no build or test stage BV runs before this one' },
    ]);
  });

  it('refuses duplicate variables and namespaces that clash with stage names, namespaces or reserved names', () => {
    const issues = (stages: unknown[], variables?: unknown[]) => {
      const parsed = PipelineDefinition.safeParse({ name: 'hello', source: { provider: 'generic', repository: 'file:///tmp/repo' }, stages, ...(variables ? { variables } : {}) });
      return parsed.success ? [] : parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`);
    };
    expect(issues([{ name: 'Build', type: 'build' }], [{ name: 'A' }, { name: 'A', defaultValue: 'x' }])).toEqual(['variables.1.name: duplicate variable "A"']);
    expect(issues([{ name: 'Build', type: 'build' }], [{ name: 'A.B' }, { name: 'C', defaultValue: '' }, { name: '__proto__', defaultValue: 'x' }, { name: 'D', defaultValue: 'a\0b' }])).toEqual([
      'variables.0.name: must match ^[A-Za-z0-9@_-]+$',
      'variables.1.defaultValue: Too small: expected string to have >=1 characters',
      'variables.2.name: __proto__ is not allowed',
      'variables.3.defaultValue: must not contain a NUL character',
    ]);
    // The same for a stage's environment, when a pipeline is defined: a value no process can take.
    expect(variableIssues(definitionWith([{ name: 'Build', type: 'build', env: { variables: { A: 'a\0b' } } }, { name: 'Deploy', type: 'deploy', target: { kind: 'local', command: 'x', env: { B: '\0' } } }]))).toEqual([
      { path: 'stages.0.env.variables.A', message: 'must not contain a NUL character' },
      { path: 'stages.1.target.env.B', message: 'must not contain a NUL character' },
    ]);
    expect(issues([{ name: 'Build', type: 'build', namespace: 'Test' }, { name: 'Test', type: 'test', namespace: 'Source' }, { name: 'Other', type: 'test', namespace: 'Build' }, { name: 'Last', type: 'test', namespace: 'Last' }])).toEqual([
      'stages.0.namespace: namespace "Test" is already a stage name, a namespace or reserved',
      'stages.1.namespace: namespace "Source" is already a stage name, a namespace or reserved',
      'stages.2.namespace: namespace "Build" is already a stage name, a namespace or reserved',
    ]);
  });
});

describe('variableIssues (checked when a pipeline is defined)', () => {
  it('accepts references to earlier build and test stages, Source and codepipeline', () => {
    expect(variableIssues(definitionWith(STAGES))).toEqual([]);
  });

  it('names each reference that can never resolve', () => {
    const def = definitionWith([
      { name: 'Build', type: 'build', env: { variables: { SELF: '#{Build.X}', LATER: '#{Deploy.URL}' } } },
      { name: 'Deploy', type: 'deploy', target: { kind: 'local', command: 'x --v #{Build.X}', env: { A: '#{Source.Author}', B: '#{codepipeline.Nope}', C: '#{Nowhere.X}', D: '#{Build.APP.VERSION} #{ Build.X }', E: '#{SourceVariables.CommitId}' } } },
    ]);
    expect(variableIssues(def)).toEqual([
      { path: 'stages.0.env.variables.SELF', message: '#{Build.X}: no build or test stage Build runs before this one' },
      { path: 'stages.0.env.variables.LATER', message: '#{Deploy.URL}: no build or test stage Deploy runs before this one' },
      { path: 'stages.1.target.command', message: '#{Build.X}: variables are not put into commands; set one in target.env and use it as $NAME' },
      { path: 'stages.1.target.env.A', message: '#{Source.Author}: Source has only CommitId and BranchName' },
      { path: 'stages.1.target.env.B', message: '#{codepipeline.Nope}: codepipeline has only PipelineExecutionId' },
      { path: 'stages.1.target.env.C', message: '#{Nowhere.X}: no build or test stage Nowhere runs before this one' },
      { path: 'stages.1.target.env.D', message: '#{Build.APP.VERSION}: not a variable reference: #{Namespace.Variable}, of letters, digits, @, _ and -' },
      { path: 'stages.1.target.env.D', message: '#{ Build.X }: not a variable reference: #{Namespace.Variable}, of letters, digits, @, _ and -' },
      { path: 'stages.1.target.env.E', message: "#{SourceVariables.CommitId}: no build or test stage SourceVariables runs before this one (the source's namespace is Source)" },
    ]);
  });

  it('reserves codepipeline and variables, namespaces of their own, as stage names', () => {
    for (const name of ['codepipeline', 'variables']) {
      expect(() => definitionWith([{ name, type: 'build' }])).toThrow(/duplicate or reserved stage name/);
    }
  });
});
