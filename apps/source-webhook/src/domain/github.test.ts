import { describe, expect, it } from 'vitest';
import { githubPushToSourceEvent, GithubPush, verifyGithubSignature } from './github.js';

describe('verifyGithubSignature', () => {
  const secret = "It's a Secret to Everybody";
  const body = Buffer.from('Hello, World!');
  it('accepts GitHub\'s documented test vector', () => {
    expect(verifyGithubSignature(secret, body, 'sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17')).toBe(true);
  });
  it.each([
    ['missing', undefined],
    ['wrong prefix', 'sha1=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17'],
    ['short', 'sha256=757107ea'],
    ['one digit off', 'sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e18'],
    ['not hex', 'sha256=zz'],
    ['valid one with trailing junk', 'sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17zz'],
    ['valid one repeated (a duplicated header)', 'sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17, sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17'],
  ])('refuses a %s signature', (_n, header) => {
    expect(verifyGithubSignature(secret, body, header)).toBe(false);
  });
  it('refuses when the body changed by one byte', () => {
    expect(verifyGithubSignature(secret, Buffer.from('Hello, World?'), 'sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17')).toBe(false);
  });
});

describe('githubPushToSourceEvent', () => {
  it('normalises a push and collects changed files', () => {
    const payload = GithubPush.parse({
      ref: 'refs/heads/main',
      before: '0'.repeat(40),
      after: 'b'.repeat(40),
      repository: { clone_url: 'https://github.com/o/r.git', ssh_url: 'git@github.com:o/r.git' },
      commits: [{ added: ['a'], modified: ['b'], removed: [] }, { added: [], modified: ['b'], removed: ['c'] }],
      sender: { login: 'octocat' },
    });
    expect(githubPushToSourceEvent(payload, 'd1')).toMatchObject({ branch: 'main', after: 'b'.repeat(40), changedFiles: ['a', 'b', 'c'], actor: 'octocat', deleted: false });
  });
  it.each([
    ['not a full ref', 'main'],
    ['a branch without a name', 'refs/heads/'],
    ['a control character', 'refs/x/a\n[source] stored snapshot FAKE'],
    ['over 255 characters', `refs/heads/${'a'.repeat(300)}`],
    ['a `..`', 'refs/heads/a..b'],
  ])('refuses a ref with %s, naming the field', (_n, ref) => {
    const parsed = GithubPush.safeParse({ ref, after: 'b'.repeat(40), repository: { clone_url: 'u' } });
    expect(parsed.success).toBe(false);
    expect(parsed.error?.issues[0]?.path).toEqual(['ref']);
  });
  it('marks a branch deletion', () => {
    const payload = GithubPush.parse({ ref: 'refs/heads/x', after: '0'.repeat(40), deleted: true, repository: { clone_url: 'u' } });
    expect(githubPushToSourceEvent(payload, 'd').deleted).toBe(true);
  });
});
