/** The last `maxLines` lines of `text`, at most `maxChars` characters, for a failure message. */
export function tailLines(text: string, maxLines = 20, maxChars = 2000): string {
  const lines = text.replace(/\s+$/, '').split(/\r?\n/);
  let tail = lines.slice(-maxLines).join('\n');
  if (tail.length > maxChars) tail = `…${tail.slice(tail.length - maxChars + 1)}`;
  return tail;
}
