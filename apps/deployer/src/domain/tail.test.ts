import { describe, expect, it } from 'vitest';
import { tailLines } from './tail.js';

describe('tailLines', () => {
  it('keeps the last lines, dropping trailing blank lines', () => {
    const text = Array.from({ length: 30 }, (_, i) => `line ${i + 1}`).join('\n') + '\n\n';
    const tail = tailLines(text, 3);
    expect(tail).toBe('line 28\nline 29\nline 30');
  });

  it('caps the length, marking the cut', () => {
    const tail = tailLines('x'.repeat(5000), 20, 100);
    expect(tail).toHaveLength(100);
    expect(tail.startsWith('…')).toBe(true);
  });

  it('returns an empty string for empty output', () => {
    expect(tailLines('')).toBe('');
  });
});
