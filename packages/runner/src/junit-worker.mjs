// The JUnit parsing thread (see JUnitReader in junit.ts). Plain JavaScript: it runs without tsx.
// Each message names a descriptor the main thread opened and checked; this thread reads it (the
// main thread never holds the text) and answers with the summary or the error's message.
import { readSync } from 'node:fs';
import { parentPort } from 'node:worker_threads';
import { JUnitError, parseJUnit } from './junit-parse.mjs';

const CHUNK = 1024 * 1024;

/** Reads the whole file from its start, refusing it past maxBytes (it may have grown since fstat). */
function readAll(fd, maxBytes) {
  const chunks = [];
  let total = 0;
  for (;;) {
    const chunk = Buffer.allocUnsafe(CHUNK);
    const n = readSync(fd, chunk, 0, CHUNK, total);
    if (n === 0) break;
    total += n;
    if (total > maxBytes) throw new JUnitError(`report is larger than ${maxBytes} bytes`);
    chunks.push(n === CHUNK ? chunk : chunk.subarray(0, n));
  }
  return Buffer.concat(chunks, total);
}

parentPort.on('message', ({ fd, maxBytes }) => {
  try {
    parentPort.postMessage({ summary: parseJUnit(readAll(fd, maxBytes).toString('utf8'), maxBytes) });
  } catch (err) {
    parentPort.postMessage({ error: err instanceof JUnitError ? err.message : `cannot be read: ${err.message}` });
  }
});
