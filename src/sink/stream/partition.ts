/**
 * Partition routing for the super stream: all events of one row go to one partition, so they
 * stay in commit order there. The partition is FNV-1a (32 bit) of `schema.table`, a NUL and the
 * text of the event's `key` as pgwarren writes it, modulo the partition count. The key's text is
 * the same for every event of a row (pgwarren writes key columns in a fixed order), so no parse
 * is needed; events without a key (truncate, bulk, keyless tables) route by table alone.
 *
 * The helpers scan pgwarren's own JSON (one object per event, or an array of them in batched
 * mode) without parsing values: a tiny scanner that only knows where strings and nestings end.
 */

/** Index just past the JSON value starting at `i` (whitespace-free JSON as pgwarren writes it). */
export function skipValue(text: string, i: number): number {
  const c = text.charCodeAt(i);
  if (c === 0x22 /* " */) {
    for (let j = i + 1; j < text.length; j++) {
      const d = text.charCodeAt(j);
      if (d === 0x5c /* \ */) j++;
      else if (d === 0x22) return j + 1;
    }
    throw new Error('unterminated JSON string');
  }
  if (c === 0x7b /* { */ || c === 0x5b /* [ */) {
    let depth = 0;
    for (let j = i; j < text.length; j++) {
      const d = text.charCodeAt(j);
      if (d === 0x22) {
        j = skipValue(text, j) - 1;
      } else if (d === 0x7b || d === 0x5b) depth++;
      else if (d === 0x7d || d === 0x5d) {
        depth--;
        if (depth === 0) return j + 1;
      }
    }
    throw new Error('unterminated JSON object or array');
  }
  // number, true, false, null
  let j = i;
  while (j < text.length) {
    const d = text.charCodeAt(j);
    if (d === 0x2c /* , */ || d === 0x7d || d === 0x5d || d === 0x20) break;
    j++;
  }
  return j;
}

/** The raw text of top-level member `name` of the JSON object starting at `start`, or null. */
export function memberText(text: string, name: string, start = 0): string | null {
  let i = start;
  if (text.charCodeAt(i) !== 0x7b) return null;
  i++;
  while (i < text.length && text.charCodeAt(i) !== 0x7d) {
    const keyEnd = skipValue(text, i);
    const key = text.slice(i + 1, keyEnd - 1);
    const valueStart = keyEnd + 1; // past ':'
    const valueEnd = skipValue(text, valueStart);
    if (key === name) return text.slice(valueStart, valueEnd);
    i = valueEnd;
    if (text.charCodeAt(i) === 0x2c) i++;
  }
  return null;
}

/** The elements of a JSON array as raw texts (a batched message body). */
export function arrayElements(text: string): string[] {
  const out: string[] = [];
  if (text.charCodeAt(0) !== 0x5b) throw new Error('not a JSON array');
  let i = 1;
  while (i < text.length && text.charCodeAt(i) !== 0x5d) {
    const end = skipValue(text, i);
    out.push(text.slice(i, end));
    i = end;
    if (text.charCodeAt(i) === 0x2c) i++;
  }
  return out;
}

/** FNV-1a, 32 bit, over the UTF-16 code units of `s` (deterministic across runs and hosts). */
export function fnv1a(s: string, hash = 0x811c9dc5): number {
  let h = hash;
  for (let i = 0; i < s.length; i++) {
    h ^= s.charCodeAt(i);
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h >>> 0;
}

/** Partition of one event: hash of schema.table NUL key text, modulo `partitions`. */
export function partitionOf(schema: string, table: string, keyText: string | null, partitions: number): number {
  if (partitions <= 1) return 0;
  const h = fnv1a(keyText ?? 'null', fnv1a('\u0000', fnv1a(`${schema}.${table}`)));
  return h % partitions;
}

/** Partition of one event body (`schema`, `table` of the delivery). */
export function partitionOfEvent(schema: string, table: string, body: string, partitions: number): number {
  if (partitions <= 1) return 0;
  return partitionOf(schema, table, memberText(body, 'key'), partitions);
}
