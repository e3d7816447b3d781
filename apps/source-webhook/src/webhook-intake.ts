import { createHash } from 'node:crypto';
import { setImmediate as nextTurn } from 'node:timers/promises';
import type { PipelineDefinition, Trigger } from '@conveyor/contracts';
import { ConflictError, InputError, issuesFromZod, NotFoundError, UnauthorizedError, type Logger } from '@conveyor/service-kit';
import { githubPushToSourceEvent, GithubPush, verifyGithubSignature } from './domain/github.js';
import { decideTrigger, normalizeRepositoryUrl, type TriggerDecision } from './domain/triggers.js';
import type { Orchestrator } from './orchestrator.js';
import type { PipelineStore, RunStore } from './ports.js';

export interface WebhookReply {
  status: 200 | 202;
  body: Record<string, unknown>;
}

export interface GithubDelivery {
  event?: string;
  deliveryId?: string;
  signature?: string;
  rawBody: Buffer;
  /**
   * The body is `application/x-www-form-urlencoded` (GitHub's default content type): the JSON is its
   * `payload` field. The signature still covers the raw body.
   */
  form?: boolean;
  /** Set by `/webhooks/github/:pipeline`: only that pipeline's secret is tried. */
  pipeline?: string;
}

const DELIVERY_ID = /^[A-Za-z0-9._-]{1,200}$/;
/** An HMAC over more than this takes the thread for a millisecond or more: yield between two. */
const YIELD_BETWEEN_HMACS_ABOVE_BYTES = 256 * 1024;

/**
 * GitHub deliveries: verify (constant time, raw body) before parsing, then match pipelines by
 * repository, apply trigger filters, and record exactly one decision per delivery and pipeline.
 */
export class WebhookIntake {
  constructor(
    private readonly deps: { pipelines: PipelineStore; runs: RunStore; orchestrator: Orchestrator; logger: Logger; clock?: () => Date },
  ) {}

  private now(): string {
    return (this.deps.clock?.() ?? new Date()).toISOString();
  }

  async github(d: GithubDelivery): Promise<WebhookReply> {
    const candidates = await this.candidates(d.pipeline);
    // Whether any pipeline exists is not told to a sender who cannot sign: no candidate is a 401 too.
    const verified = await this.signedFor(candidates, d);
    if (verified.length === 0) {
      throw new UnauthorizedError('X-Hub-Signature-256 is missing or matches no pipeline secret', [{ path: 'headers.x-hub-signature-256', message: d.signature ? 'matches no pipeline secret' : 'required' }]);
    }
    if (!d.event) throw new InputError('missing X-GitHub-Event header', [{ path: 'headers.x-github-event', message: 'required' }]);
    if (!d.deliveryId || !DELIVERY_ID.test(d.deliveryId)) {
      throw new InputError('X-GitHub-Delivery must be 1-200 letters, digits, dots, dashes or underscores', [{ path: 'headers.x-github-delivery', message: d.deliveryId ? 'invalid' : 'required' }]);
    }
    // Deliveries are told apart by what their signature covers, the body: the X-GitHub-Delivery header
    // is not signed, so keyed on it, a captured delivery sent again under new ids would run again each
    // time (and redeploy an old commit). GitHub sends the same delivery again with the same body.
    const delivery = `github:sha256:${createHash('sha256').update(d.rawBody).digest('hex')}`;
    if (d.event === 'ping') {
      const seen = await this.deps.runs.recordDelivery({ key: `${delivery}:*`, decision: { outcome: 'skipped', reason: 'ping', at: this.now() } });
      return { status: 200, body: { ok: true, pipelines: verified.map((p) => p.name), ...(seen ? { duplicate: true } : {}) } };
    }
    if (d.event !== 'push') return this.skipAll(delivery, `event ${d.event} is not handled`);

    const event = githubPushToSourceEvent(this.parsePush(d.rawBody, d.form ?? false), d.deliveryId);
    const urls = new Set(event.repositoryUrls.map(normalizeRepositoryUrl));
    const matched = verified.filter((p) => urls.has(normalizeRepositoryUrl(p.source.repository)));
    if (matched.length === 0) {
      await this.deps.runs.recordDelivery({ key: `${delivery}:*`, decision: { outcome: 'skipped', reason: 'no pipeline for this repository', at: this.now() } });
      throw new NotFoundError(`no pipeline for repository ${event.repositoryUrls[0]}`);
    }
    const trigger: Trigger = {
      type: 'webhook',
      ref: event.ref,
      commit: event.after,
      deliveryId: d.deliveryId,
      provider: 'github',
      ...(event.actor ? { actor: event.actor } : {}),
      ...(event.before ? { previousCommit: event.before } : {}),
    };
    // Each pipeline's trigger globs may hold the thread up to TRIGGER_GLOB_LIMITS.perSectionMs: between
    // pipelines, the rest of the service (lock renewals, /readyz, other requests) gets a turn.
    const decisions: TriggerDecision[] = [];
    for (const p of matched) {
      if (decisions.length > 0) await nextTurn();
      decisions.push(decideTrigger(p, event));
    }
    const outcomes = await Promise.all(matched.map((p, i) => this.decide(p, trigger, decisions[i]!, delivery, d.deliveryId!)));
    const created = outcomes.filter((o) => o.outcome === 'run-created' && !o.duplicate);
    if (created.length > 0) return { status: 202, body: { runId: created[0]!.runId, runs: outcomes } };
    if (outcomes.every((o) => o.duplicate)) return { status: 200, body: { duplicate: true, runId: outcomes[0]?.runId, runs: outcomes } };
    return { status: 200, body: { skipped: true, reason: outcomes.map((o) => o.reason).join('; '), runs: outcomes } };
  }

  /**
   * The candidates whose secret signed the body. One HMAC per distinct secret (pipelines of one repository
   * often share theirs), and between two over a large body the rest of the service gets a turn: a sender
   * who cannot sign may still make this process hash its body once per secret.
   */
  private async signedFor(candidates: readonly PipelineDefinition[], d: GithubDelivery): Promise<PipelineDefinition[]> {
    const bySecret = new Map<string, boolean>();
    const signed: PipelineDefinition[] = [];
    for (const p of candidates) {
      const secret = p.source.webhookSecret!;
      let ok = bySecret.get(secret);
      if (ok === undefined) {
        if (bySecret.size > 0 && d.rawBody.length > YIELD_BETWEEN_HMACS_ABOVE_BYTES) await nextTurn();
        ok = verifyGithubSignature(secret, d.rawBody, d.signature);
        bySecret.set(secret, ok);
      }
      if (ok) signed.push(p);
    }
    return signed;
  }

  private async candidates(name?: string): Promise<PipelineDefinition[]> {
    // A definition that no longer validates is absent here: a sender who has not signed learns nothing of it.
    const one = async (n: string) =>
      this.deps.pipelines.get(n).catch((err: unknown) => {
        if (!(err instanceof ConflictError)) throw err;
        this.deps.logger.warn({ pipeline: n, err }, 'webhook for a pipeline whose stored definition is no longer valid');
        return undefined;
      });
    const all = name ? [await one(name)].filter((p): p is PipelineDefinition => p !== undefined) : await this.deps.pipelines.list();
    return all.filter((p) => p.source.provider === 'github' && p.source.webhookSecret);
  }

  private parsePush(raw: Buffer, form: boolean) {
    let text = raw.toString('utf8');
    if (form) {
      const payload = new URLSearchParams(text).get('payload');
      if (payload === null) throw new InputError('a form-encoded delivery must carry the JSON in its payload field', [{ path: 'body.payload', message: 'required' }]);
      text = payload;
    }
    let json: unknown;
    try {
      json = JSON.parse(text);
    } catch {
      throw new InputError(form ? 'the payload field is not valid JSON' : 'body is not valid JSON', [{ path: form ? 'body.payload' : 'body', message: 'invalid JSON' }]);
    }
    const parsed = GithubPush.safeParse(json);
    if (!parsed.success) throw new InputError('not a GitHub push payload', issuesFromZod(parsed.error, 'body'));
    return parsed.data;
  }

  private async decide(p: PipelineDefinition, trigger: Trigger, decision: TriggerDecision, delivery: string, deliveryId: string) {
    const key = `${delivery}:${p.name}`;
    if (decision.run) {
      const started = await this.deps.orchestrator.startRun(p, trigger, { deliveryKey: key });
      if (!started.duplicate) return { pipeline: p.name, outcome: 'run-created', runId: started.runId, duplicate: false };
      return { pipeline: p.name, outcome: started.decision.outcome, runId: started.runId, reason: started.decision.reason, duplicate: true };
    }
    const seen = await this.deps.runs.recordDelivery({ key, decision: { outcome: 'skipped', reason: decision.reason, at: this.now() } });
    this.deps.logger.info({ pipeline: p.name, deliveryId, reason: decision.reason }, 'push skipped by trigger filters');
    return { pipeline: p.name, outcome: seen?.outcome ?? 'skipped', runId: seen?.runId, reason: seen?.reason ?? decision.reason, duplicate: seen !== undefined };
  }

  private async skipAll(delivery: string, reason: string): Promise<WebhookReply> {
    const seen = await this.deps.runs.recordDelivery({ key: `${delivery}:*`, decision: { outcome: 'skipped', reason, at: this.now() } });
    return { status: 200, body: { skipped: true, reason, ...(seen ? { duplicate: true } : {}) } };
  }
}
