import { createHmac, randomUUID } from 'node:crypto';

/** How long one request may take: a hung API is a failed request (which the run's watch rides out for a while), not a hung launcher. */
const REQUEST_TIMEOUT_MS = 30_000;

/** A small client of the source-webhook HTTP API, as other systems would call it. */
export class ConveyorClient {
  constructor(
    readonly baseUrl: string,
    private readonly token: string,
  ) {}

  async request(method: string, path: string, body?: string, contentType = 'application/json'): Promise<{ status: number; json: any; text: string }> {
    const res = await fetch(`${this.baseUrl}${path}`, {
      method,
      headers: { authorization: `Bearer ${this.token}`, ...(body !== undefined ? { 'content-type': contentType } : {}) },
      ...(body !== undefined ? { body } : {}),
      signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS),
    });
    const text = await res.text();
    let json: any;
    try {
      json = JSON.parse(text);
    } catch {
      json = undefined;
    }
    return { status: res.status, json, text };
  }

  async registerPipeline(yaml: string) {
    const res = await this.request('POST', '/api/v1/pipelines', yaml, 'application/yaml');
    if (res.status !== 200 && res.status !== 201) throw new Error(`pipeline not accepted (${res.status}): ${res.text}`);
    return res.json;
  }

  async getRun(runId: string) {
    const res = await this.request('GET', `/api/v1/runs/${runId}`);
    if (res.status !== 200) throw Object.assign(new Error(`GET run ${runId}: ${res.status} ${res.text}`), { status: res.status });
    return res.json;
  }

  async logs(runId: string, stage: string): Promise<string> {
    return (await this.request('GET', `/api/v1/runs/${runId}/stages/${stage}/logs`)).text;
  }

  /** Sends a push exactly as GitHub does: JSON body signed with X-Hub-Signature-256. */
  async sendGithubPush(input: { secret: string; repository: string; branch: string; before?: string; after: string; deliveryId?: string }) {
    const deliveryId = input.deliveryId ?? randomUUID();
    // Conveyor tells deliveries apart by their signed body (the delivery header is not signed), as real
    // pushes differ by their commits and times; this one carries its delivery id, so sending it again
    // under the same id is a repeat, and under a new id another push of the same commit.
    const body = JSON.stringify({
      ref: `refs/heads/${input.branch}`,
      before: input.before ?? '0'.repeat(40),
      after: input.after,
      repository: { clone_url: input.repository },
      sender: { login: 'conveyor-launcher' },
      conveyor_delivery: deliveryId,
    });
    const signature = `sha256=${createHmac('sha256', input.secret).update(body).digest('hex')}`;
    const res = await fetch(`${this.baseUrl}/webhooks/github`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'x-github-event': 'push', 'x-github-delivery': deliveryId, 'x-hub-signature-256': signature },
      body,
      signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS),
    });
    return { status: res.status, json: (await res.json()) as any };
  }
}
