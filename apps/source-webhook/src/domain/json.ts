/** `text` parsed as JSON, or undefined when it is absent or not JSON (the caller's schema then says what is wrong). */
export function safeJson(text: string | undefined): unknown {
  try {
    return text === undefined ? undefined : JSON.parse(text);
  } catch {
    return undefined;
  }
}
