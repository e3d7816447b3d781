/** The probe target is unusable: not http(s), carries credentials, or its path moved it to another origin. */
export class UnsafeProbeUrlError extends Error {
  override name = 'UnsafeProbeUrlError';
}

/**
 * `base` (the deploy stage's URL) joined with `healthPath`. The URL comes from Conveyor's own deploy
 * result, but a probe that can reach file:, data: or another host would be a way out, so refuse.
 */
export function probeUrl(base: string, healthPath: string): string {
  let baseUrl: URL;
  try {
    baseUrl = new URL(base);
  } catch {
    throw new UnsafeProbeUrlError(`not a URL: ${base}`);
  }
  // The health path (and its query) goes after the base's path; the base's query and fragment go.
  const full = new URL(baseUrl);
  const q = healthPath.indexOf('?');
  full.pathname = `${baseUrl.pathname.replace(/\/+$/, '')}${q < 0 ? healthPath : healthPath.slice(0, q)}`;
  full.search = q < 0 ? '' : healthPath.slice(q);
  full.hash = '';
  if (baseUrl.protocol !== 'http:' && baseUrl.protocol !== 'https:') {
    throw new UnsafeProbeUrlError(`refusing to probe ${baseUrl.protocol} URL: only http and https are probed`);
  }
  if (baseUrl.username || baseUrl.password) throw new UnsafeProbeUrlError('refusing to probe a URL with credentials');
  if (full.origin !== baseUrl.origin) throw new UnsafeProbeUrlError(`health path leaves ${baseUrl.origin}`);
  return full.toString();
}
