import { describe, expect, it } from 'vitest';
import { probeUrl, UnsafeProbeUrlError } from './probe-url.js';

describe('probeUrl', () => {
  it('joins the deployed URL and the health path', () => {
    expect(probeUrl('http://127.0.0.1:4100', '/healthz')).toBe('http://127.0.0.1:4100/healthz');
    expect(probeUrl('https://shop.example.com/app/', '/up?deep=1')).toBe('https://shop.example.com/app/up?deep=1');
    expect(probeUrl('http://h:1/app?x=1#top', '/healthz')).toBe('http://h:1/app/healthz');
  });

  it.each([
    ['file:///etc/passwd', 'file:'],
    ['ftp://example.com', 'ftp:'],
    ['javascript:alert(1)', 'javascript:'],
    ['data:text/plain,hi', 'data:'],
  ])('refuses %s', (url, scheme) => {
    expect(() => probeUrl(url, '/healthz')).toThrow(UnsafeProbeUrlError);
    expect(() => probeUrl(url, '/healthz')).toThrow(scheme);
  });

  it('refuses credentials; a path never moves the probe to another host', () => {
    expect(() => probeUrl('http://user:pw@127.0.0.1:4100', '/healthz')).toThrow('credentials');
    expect(new URL(probeUrl('http://127.0.0.1:4100', '//evil.example/x')).host).toBe('127.0.0.1:4100');
    expect(() => probeUrl('not a url', '/healthz')).toThrow(UnsafeProbeUrlError);
  });
});
