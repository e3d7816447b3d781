import { createHmac, timingSafeEqual } from 'node:crypto';
import { z } from 'zod';
import { GitRefName, SourceEvent } from '@conveyor/contracts';
import { splitRef } from './triggers.js';

/** Constant-time check of `X-Hub-Signature-256: sha256=<hex>` over the raw body. */
export function verifyGithubSignature(secret: string, rawBody: Buffer, header: string | undefined): boolean {
  // Strictly `sha256=` and 64 hex digits: Buffer.from(…, 'hex') would stop quietly at a bad character.
  if (!header || !/^sha256=[0-9a-fA-F]{64}$/.test(header)) return false;
  const given = Buffer.from(header.slice('sha256='.length), 'hex');
  const expected = createHmac('sha256', secret).update(rawBody).digest();
  return given.length === expected.length && timingSafeEqual(given, expected);
}

const Commit = z.object({
  added: z.array(z.string()).default([]),
  modified: z.array(z.string()).default([]),
  removed: z.array(z.string()).default([]),
});

/** The parts of GitHub's push payload Conveyor reads; everything else is ignored. */
export const GithubPush = z.object({
  /** A full ref (`refs/heads/main`), valid as git takes it: it reaches logs and the run record. */
  ref: GitRefName.refine((r) => r.startsWith('refs/'), 'must be a full ref (refs/…)'),
  before: z.string().optional(),
  after: z.string().regex(/^[0-9a-f]{40}$/, 'must be a 40-hex commit sha'),
  deleted: z.boolean().optional(),
  repository: z.object({
    clone_url: z.string().optional(),
    html_url: z.string().optional(),
    ssh_url: z.string().optional(),
    git_url: z.string().optional(),
    url: z.string().optional(),
  }),
  commits: z.array(Commit).optional(),
  head_commit: Commit.nullable().optional(),
  pusher: z.object({ name: z.string().optional() }).optional(),
  sender: z.object({ login: z.string().optional() }).optional(),
});

const ZERO = /^0{40}$/;

export function githubPushToSourceEvent(payload: z.infer<typeof GithubPush>, deliveryId: string): SourceEvent {
  const r = payload.repository;
  const urls = [r.clone_url, r.html_url, r.ssh_url, r.git_url, r.url].filter((u): u is string => Boolean(u));
  const commits = payload.commits ?? (payload.head_commit ? [payload.head_commit] : []);
  // GitHub caps `commits` at 20; past that the changed-file list is incomplete, so no path filtering.
  const changedFiles = commits.length > 0 && commits.length < 20 ? [...new Set(commits.flatMap((c) => [...c.added, ...c.modified, ...c.removed]))] : undefined;
  return SourceEvent.parse({
    v: 1,
    provider: 'github',
    event: 'push',
    deliveryId,
    repositoryUrls: urls.length ? urls : ['(none)'],
    ref: payload.ref,
    ...splitRef(payload.ref),
    ...(payload.before ? { before: payload.before } : {}),
    after: payload.after,
    deleted: payload.deleted === true || ZERO.test(payload.after),
    ...(changedFiles ? { changedFiles } : {}),
    ...(payload.pusher?.name || payload.sender?.login ? { actor: payload.sender?.login ?? payload.pusher?.name } : {}),
  });
}
