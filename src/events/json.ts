/**
 * The JSON value model of events and its serializer.
 *
 * `JSON.stringify` cannot embed a fragment that is already JSON (a jsonb column whose numbers have
 * more digits than a double holds), so events are serialized here instead:
 * - `RawJson` carries JSON text that is written verbatim. The caller vouches that it is valid JSON
 *   (values.ts only makes it from Postgres json/jsonb output, which Postgres has validated).
 * - Object keys come out in the object's own property order: insertion order, except that
 *   integer-like keys ("1", "42") come first in ascending order, as in every JS object. That order
 *   is deterministic, so the same value always serializes to the same bytes.
 * - Numbers must be finite (NaN/Infinity throw); negative zero is written `-0` (valid JSON) so a
 *   float8 `-0` survives the trip.
 * - `undefined` as an object property is skipped (as JSON.stringify does); anywhere else it throws.
 *
 * json/jsonb text is minified (`minifyJson`) before it becomes a RawJson: insignificant whitespace
 * is removed, everything else (key order, duplicate keys, number spelling, string escapes) is kept
 * byte for byte. Postgres prints jsonb as `{"a": 1, "b": [1, 2]}` and keeps json as it was typed;
 * events carry `{"a":1,"b":[1,2]}` either way, independent of how a decoder extracted the text.
 */

export class RawJson {
  constructor(readonly text: string) {}
}

export type JsonValue =
  | null
  | boolean
  | number
  | string
  | RawJson
  | readonly JsonValue[]
  | { readonly [k: string]: JsonValue };

/** Serialize `v` as compact JSON (no whitespace), embedding RawJson fragments verbatim. */
export function stringify(v: JsonValue): string {
  switch (typeof v) {
    case 'string':
      return quote(v);
    case 'number':
      return numberText(v);
    case 'boolean':
      return v ? 'true' : 'false';
    case 'object':
      if (v === null) return 'null';
      if (v instanceof RawJson) return v.text;
      if (Array.isArray(v)) return arrayText(v as readonly JsonValue[]);
      return objectText(v as { readonly [k: string]: JsonValue });
    default:
      throw new TypeError(`cannot serialize a ${typeof v} as JSON`);
  }
}

/** Characters JSON.stringify would escape (control, quote, backslash) or check (surrogates). */
const NEEDS_ESCAPE = /["\\\u0000-\u001f\ud800-\udfff]/;

/** JSON string literal; most values need no escaping and skip JSON.stringify's slower path. */
function quote(s: string): string {
  return NEEDS_ESCAPE.test(s) ? JSON.stringify(s) : '"' + s + '"';
}

/** Object keys (column names) repeat endlessly: their `"key":` text is cached, up to a bound. */
const keyCache = new Map<string, string>();
const KEY_CACHE_MAX = 10_000;

function quoteKey(k: string): string {
  let text = keyCache.get(k);
  if (text === undefined) {
    text = quote(k) + ':';
    if (keyCache.size < KEY_CACHE_MAX) keyCache.set(k, text);
  }
  return text;
}

function numberText(n: number): string {
  if (n === 0) return 1 / n < 0 ? '-0' : '0';
  if (n - n !== 0) throw new TypeError(`cannot serialize ${n} as a JSON number`); // NaN, ±Infinity
  return '' + n;
}

function arrayText(a: readonly JsonValue[]): string {
  const n = a.length;
  if (n === 0) return '[]';
  let out = '[' + stringify(a[0]!);
  for (let i = 1; i < n; i++) out += ',' + stringify(a[i]!);
  return out + ']';
}

function objectText(o: { readonly [k: string]: JsonValue }): string {
  let out = '{';
  let first = true;
  // for...in walks own enumerable keys in property order without allocating a key array; values
  // here are plain (or null-prototype) objects, so no inherited keys appear.
  for (const k in o) {
    const value = o[k];
    if (value === undefined) continue;
    out += (first ? '' : ',') + quoteKey(k) + stringify(value);
    first = false;
  }
  return out + '}';
}

/**
 * Remove the insignificant whitespace (space, tab, LF, CR outside strings) from valid JSON text.
 * Returns the input itself when there is nothing to remove.
 */
export function minifyJson(text: string): string {
  const n = text.length;
  let out = '';
  let last = 0; // start of the pending chunk to copy
  let i = 0;
  while (i < n) {
    const c = text.charCodeAt(i);
    if (c === 34 /* " */) {
      // Skip the string: find the closing quote that is not escaped.
      let j = text.indexOf('"', i + 1);
      while (j !== -1) {
        let backslashes = 0;
        for (let k = j - 1; text.charCodeAt(k) === 92 /* \ */; k--) backslashes++;
        if ((backslashes & 1) === 0) break;
        j = text.indexOf('"', j + 1);
      }
      if (j === -1) return text; // not valid JSON: leave it alone
      i = j + 1;
    } else if (c === 32 || c === 10 || c === 13 || c === 9) {
      if (i > last) out += text.slice(last, i);
      i++;
      while (i < n) {
        const w = text.charCodeAt(i);
        if (w !== 32 && w !== 10 && w !== 13 && w !== 9) break;
        i++;
      }
      last = i;
    } else {
      i++;
    }
  }
  if (last === 0) return text;
  return last < n ? out + text.slice(last) : out;
}
