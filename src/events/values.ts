/**
 * Postgres text output -> the event's JSON value (README "Events"), without loss.
 *
 * The text is what the replication connection prints with TimeZone=UTC, DateStyle=ISO,
 * IntervalStyle=postgres, extra_float_digits=3. `converterFor` picks (and memoizes) one function
 * per type; the hot path then calls that function once per non-null value. Converters never throw:
 * text they cannot read is passed on unchanged.
 *
 * | type                               | JSON                                                        |
 * |------------------------------------|-------------------------------------------------------------|
 * | bool                               | true / false                                                |
 * | int2, int4, oid                    | number                                                      |
 * | float4, float8                     | number; NaN, Infinity, -Infinity as those strings; -0 kept  |
 * | int8, numeric, money               | string, exactly as printed (numeric NaN/Infinity too)       |
 * | json, jsonb                        | embedded JSON (RawJson), whitespace removed, digits kept    |
 * | timestamptz                        | ISO-8601 UTC, 6 fractional digits, `Z` (see below)          |
 * | bytea                              | base64 of the bytes (hex `\x..` or legacy escape format)    |
 * | arrays (any element, any dims)     | JSON arrays of converted elements; bounds decoration dropped |
 * | domains                            | as their base type                                          |
 * | composites                         | object {field: converted value}; NULL field -> null         |
 * | everything else, unknown OIDs      | Postgres' text unchanged                                    |
 *
 * timestamptz: 'infinity' and '-infinity' stay those strings. Years 0..9999 are written with four
 * digits, others in the ISO-8601 expanded form ECMAScript uses (`+012345-01-01T00:00:00.000000Z`).
 * BC dates become astronomical years (1 BC = `0000`, 2 BC = `-000001`): same proleptic Gregorian
 * calendar as Postgres, so the instant is exact. An offset other than +00 is converted to UTC.
 *
 * Composites: a value whose field count does not match the catalog (the type was altered after the
 * change was written) is passed on as its record text rather than guessed at. Keys follow JS
 * property order (integer-like field names first), which is deterministic.
 */
import { builtinType, type TypeInfo, type TypeLookup } from '../source/type-catalog.js';
import { RawJson, minifyJson, type JsonValue } from './json.js';

export type Converter = (text: string) => JsonValue;

const asText: Converter = (text) => text;

/** boolout prints t/f; true/false (the bool::text cast, wal2json literals) are accepted too. */
const toBool: Converter = (text) =>
  text === 't' ? true : text === 'f' ? false : text === 'true' ? true : text === 'false' ? false : text;

/** int2, int4, oid, and float4/float8 (whose NaN/±Infinity stay strings). */
const toNumber: Converter = (text) => {
  const n = +text;
  return n - n === 0 ? n : text; // NaN and ±Infinity fail the test
};

const toJson: Converter = (text) => new RawJson(minifyJson(text));

// ---------------------------------------------------------------- timestamptz

const FRACTION_PAD = ['000000', '00000', '0000', '000', '00', '0', ''];

const toTimestamptz: Converter = (t) => {
  const n = t.length;
  // Fast path: `YYYY-MM-DD HH:MM:SS[.f{1,6}]+00`, what a UTC session prints for years 1..9999 AD.
  if (
    n >= 22 &&
    n <= 29 &&
    t.charCodeAt(n - 3) === 43 /* + */ &&
    t.charCodeAt(n - 2) === 48 &&
    t.charCodeAt(n - 1) === 48 &&
    t.charCodeAt(4) === 45 /* - */ &&
    t.charCodeAt(10) === 32 /* space */
  ) {
    if (n === 22) return t.slice(0, 10) + 'T' + t.slice(11, 19) + '.000000Z';
    if (t.charCodeAt(19) === 46 /* . */) {
      return t.slice(0, 10) + 'T' + t.slice(11, n - 3) + FRACTION_PAD[n - 23] + 'Z';
    }
  }
  return timestamptzSlow(t);
};

const TIMESTAMPTZ =
  /^(\d{4,})-(\d\d)-(\d\d) (\d\d):(\d\d):(\d\d)(?:\.(\d{1,6}))?(?:([+-])(\d\d)(?::?(\d\d))?(?::?(\d\d))?)?( BC)?$/;

function timestamptzSlow(t: string): string {
  if (t === 'infinity' || t === '-infinity') return t;
  const m = TIMESTAMPTZ.exec(t);
  if (!m) return t;
  let year = +m[1]!;
  if (m[12]) year = 1 - year; // n BC is astronomical year 1 - n
  const offset = m[8] ? (m[8] === '-' ? -1 : 1) * (+m[9]! * 3600 + +(m[10] ?? 0) * 60 + +(m[11] ?? 0)) : 0;
  let secs = daysFromCivil(year, +m[2]!, +m[3]!) * 86400 + +m[4]! * 3600 + +m[5]! * 60 + +m[6]! - offset;
  const days = Math.floor(secs / 86400);
  secs -= days * 86400;
  const [y, mo, d] = civilFromDays(days);
  const fraction = m[7] ?? '';
  const yearText = y >= 0 && y <= 9999 ? pad(y, 4) : (y < 0 ? '-' : '+') + pad(Math.abs(y), 6);
  return (
    `${yearText}-${pad(mo, 2)}-${pad(d, 2)}T${pad(Math.floor(secs / 3600), 2)}:${pad(Math.floor(secs / 60) % 60, 2)}:` +
    `${pad(secs % 60, 2)}.${fraction}${FRACTION_PAD[fraction.length]}Z`
  );
}

function pad(n: number, width: number): string {
  return String(n).padStart(width, '0');
}

/** Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm, any year). */
function daysFromCivil(y: number, m: number, d: number): number {
  y -= m <= 2 ? 1 : 0;
  const era = Math.floor(y / 400);
  const yoe = y - era * 400;
  const doy = Math.floor((153 * (m > 2 ? m - 3 : m + 9) + 2) / 5) + d - 1;
  const doe = yoe * 365 + Math.floor(yoe / 4) - Math.floor(yoe / 100) + doy;
  return era * 146097 + doe - 719468;
}

function civilFromDays(z: number): [number, number, number] {
  z += 719468;
  const era = Math.floor(z / 146097);
  const doe = z - era * 146097;
  const yoe = Math.floor((doe - Math.floor(doe / 1460) + Math.floor(doe / 36524) - Math.floor(doe / 146096)) / 365);
  const doy = doe - (365 * yoe + Math.floor(yoe / 4) - Math.floor(yoe / 100));
  const mp = Math.floor((5 * doy + 2) / 153);
  const d = doy - Math.floor((153 * mp + 2) / 5) + 1;
  const m = mp < 10 ? mp + 3 : mp - 9;
  return [yoe + era * 400 + (m <= 2 ? 1 : 0), m, d];
}

// ---------------------------------------------------------------- bytea

const toBytea: Converter = (t) => {
  if (t.charCodeAt(0) === 92 /* \ */ && t.charCodeAt(1) === 120 /* x */) {
    if (t.length === 2) return '';
    const bytes = Buffer.from(t.slice(2), 'hex');
    // Buffer.from stops silently at the first bad digit: check it read everything.
    return bytes.length * 2 === t.length - 2 ? bytes.toString('base64') : t;
  }
  return byteaEscapeFormat(t);
};

/** bytea_output = escape: printable ASCII as is, `\\` for a backslash, `\ooo` for other bytes. */
function byteaEscapeFormat(t: string): string {
  const n = t.length;
  const out = Buffer.allocUnsafe(n);
  let len = 0;
  for (let i = 0; i < n; i++) {
    const c = t.charCodeAt(i);
    if (c === 92) {
      const next = t.charCodeAt(i + 1);
      if (next === 92) {
        out[len++] = 92;
        i++;
        continue;
      }
      const a = next - 48;
      const b = t.charCodeAt(i + 2) - 48;
      const d = t.charCodeAt(i + 3) - 48;
      if (a >= 0 && a <= 3 && b >= 0 && b <= 7 && d >= 0 && d <= 7) {
        out[len++] = (a << 6) | (b << 3) | d;
        i += 3;
        continue;
      }
      return t;
    }
    if (c > 0xff) return t;
    out[len++] = c;
  }
  return out.toString('base64', 0, len);
}

// ---------------------------------------------------------------- arrays

function isSpace(c: number): boolean {
  return c === 32 || (c >= 9 && c <= 13); // array_isspace: space \t \n \v \f \r
}

function isNullWord(s: string): boolean {
  return s === 'NULL' || (s.length === 4 && s.toUpperCase() === 'NULL');
}

/**
 * Parse array_out text: optional `[lo:hi]...=` bounds, `{` elements `}` nested per dimension,
 * elements separated by the element type's delimiter, double-quoted (backslash escapes) when
 * needed, unquoted NULL for a null element.
 */
function parseArray(s: string, delim: number, conv: Converter): JsonValue {
  const n = s.length;
  let i = 0;
  if (s.charCodeAt(0) === 91 /* [ */) {
    i = s.indexOf('=') + 1;
    if (i === 0) return s;
  }
  if (s.charCodeAt(i) !== 123 /* { */) return s;
  i++;
  const root: JsonValue[] = [];
  const stack: JsonValue[][] = [];
  let cur = root;
  let nextBackslash = s.indexOf('\\', i);
  while (i < n) {
    const c = s.charCodeAt(i);
    if (c === delim || isSpace(c)) {
      i++;
    } else if (c === 123) {
      const inner: JsonValue[] = [];
      cur.push(inner);
      stack.push(cur);
      cur = inner;
      i++;
    } else if (c === 125 /* } */) {
      i++;
      const outer = stack.pop();
      if (outer === undefined) return i === n ? root : s;
      cur = outer;
    } else if (c === 34 /* " */) {
      const close = s.indexOf('"', i + 1);
      if (close === -1) return s;
      if (nextBackslash !== -1 && nextBackslash < i) nextBackslash = s.indexOf('\\', i);
      if (nextBackslash === -1 || nextBackslash > close) {
        cur.push(conv(s.slice(i + 1, close)));
        i = close + 1;
      } else {
        let value = '';
        let start = i + 1;
        let k = start;
        for (;;) {
          if (k >= n) return s;
          const d = s.charCodeAt(k);
          if (d === 92) {
            value += s.slice(start, k);
            start = k + 1;
            k += 2;
          } else if (d === 34) {
            break;
          } else {
            k++;
          }
        }
        cur.push(conv(value + s.slice(start, k)));
        i = k + 1;
        nextBackslash = s.indexOf('\\', i);
      }
    } else {
      // Unquoted element, up to the delimiter or a brace. array_out never escapes here, but
      // array_in would accept backslashes, so they are honoured.
      let k = i;
      let escaped = false;
      while (k < n) {
        const d = s.charCodeAt(k);
        if (d === delim || d === 125 || d === 123) break;
        if (d === 92) {
          escaped = true;
          k += 2;
        } else {
          k++;
        }
      }
      if (k > n) return s;
      let end = k;
      while (end > i && isSpace(s.charCodeAt(end - 1))) end--;
      let token = s.slice(i, end);
      if (escaped) {
        token = token.replace(/\\(.)/gs, '$1');
        cur.push(conv(token));
      } else {
        cur.push(isNullWord(token) ? null : conv(token));
      }
      i = k;
    }
  }
  return s; // no closing brace
}

// ---------------------------------------------------------------- composites

interface Field {
  readonly name: string;
  readonly conv: Converter;
}

/**
 * Parse record_out text `(a,"b c",,"x""y")`: a field with no characters at all is NULL; `""` is an
 * empty string; inside quotes `""` is a quote and a backslash escapes the next character.
 */
function parseRecord(s: string, fields: readonly Field[], protoKey: boolean): JsonValue {
  const n = s.length;
  if (s.charCodeAt(0) !== 40 /* ( */ || s.charCodeAt(n - 1) !== 41 /* ) */) return s;
  if (fields.length === 0) return n === 2 ? {} : s;
  const out: { [k: string]: JsonValue } = {};
  let i = 1;
  for (let f = 0; f < fields.length; f++) {
    if (f > 0) {
      if (s.charCodeAt(i) !== 44 /* , */) return s;
      i++;
    }
    let value: JsonValue;
    const c = s.charCodeAt(i);
    if (c === 44 || c === 41) {
      value = null;
    } else {
      let text = '';
      let start = i;
      let inQuotes = false;
      for (;;) {
        if (i >= n) return s;
        const d = s.charCodeAt(i);
        if (d === 92) {
          text += s.slice(start, i);
          start = i + 1;
          i += 2;
        } else if (inQuotes) {
          if (d === 34) {
            if (s.charCodeAt(i + 1) === 34) {
              text += s.slice(start, i + 1);
              i += 2;
            } else {
              text += s.slice(start, i);
              inQuotes = false;
              i++;
            }
            start = i;
          } else {
            i++;
          }
        } else if (d === 44 || d === 41) {
          text += s.slice(start, i);
          break;
        } else if (d === 34) {
          text += s.slice(start, i);
          inQuotes = true;
          i++;
          start = i;
        } else {
          i++;
        }
      }
      value = fields[f]!.conv(text);
    }
    const name = fields[f]!.name;
    if (protoKey && name === '__proto__') {
      Object.defineProperty(out, name, { value, enumerable: true, writable: true, configurable: true });
    } else {
      out[name] = value;
    }
  }
  return i === n - 1 ? out : s; // more fields than the catalog knows: keep the text
}

// ---------------------------------------------------------------- choosing a converter

/** Builtins with a conversion of their own; other builtin scalars are text. */
const SCALARS = new Map<number, Converter>([
  [16, toBool],
  [17, toBytea],
  [21, toNumber],
  [23, toNumber],
  [26, toNumber],
  [700, toNumber],
  [701, toNumber],
  [114, toJson],
  [3802, toJson],
  [1184, toTimestamptz],
]);

/** Builtin arrays and the like: the same for every catalog. */
const builtinConverters = new Map<number, Converter>();
/** User-defined types, keyed by the catalog entry: a refreshed entry is a new object. */
const customConverters = new WeakMap<TypeInfo, Converter>();

interface Resolution {
  readonly types: TypeLookup;
  readonly visiting: Set<number>;
  /** False when some referenced type was unknown: the result is not memoized. */
  complete: boolean;
}

/**
 * The converter for values of type `typeOid`. Cheap to call repeatedly (memoized), but meant to be
 * called once per column when a relation is planned; an OID `types` does not know (yet) gets the
 * identity converter, which is not memoized.
 */
export function converterFor(typeOid: number, types: TypeLookup): Converter {
  return resolve(typeOid, { types, visiting: new Set(), complete: true });
}

function resolve(oid: number, r: Resolution): Converter {
  const scalar = SCALARS.get(oid);
  if (scalar) return scalar;
  const builtin = builtinType(oid);
  let cached = builtin ? builtinConverters.get(oid) : undefined;
  if (cached) return cached;
  const info = builtin ?? r.types.get(oid);
  if (!info) {
    r.complete = false;
    return asText;
  }
  if (!builtin) {
    cached = customConverters.get(info);
    if (cached) return cached;
  }
  if (r.visiting.has(oid)) return asText; // a type containing itself: Postgres forbids it
  r.visiting.add(oid);
  const outerComplete = r.complete;
  r.complete = true;
  const conv = build(info, r);
  r.visiting.delete(oid);
  if (r.complete) {
    if (builtin) builtinConverters.set(oid, conv);
    else customConverters.set(info, conv);
  }
  r.complete = outerComplete && r.complete;
  return conv;
}

function build(info: TypeInfo, r: Resolution): Converter {
  switch (info.kind) {
    case 'domain':
      return info.baseOid ? resolve(info.baseOid, r) : asText;
    case 'array': {
      if (!info.elementOid) return asText;
      const element = resolve(info.elementOid, r);
      const delim = (info.delimiter || ',').charCodeAt(0);
      return (text) => parseArray(text, delim, element);
    }
    case 'composite': {
      if (!info.fields) return asText;
      const fields: Field[] = info.fields.map((f) => ({ name: f.name, conv: resolve(f.typeOid, r) }));
      const protoKey = fields.some((f) => f.name === '__proto__');
      return (text) => parseRecord(text, fields, protoKey);
    }
    default:
      return asText;
  }
}
