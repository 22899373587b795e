/**
 * Row filters: a per-rule `where:` expression (README "Shaping the stream").
 *
 * With pgoutput the expression goes into the publication (Postgres evaluates it, any SQL Postgres
 * allows there). With wal2json it is evaluated here, on the decoded row, over a small subset of
 * SQL parsed by hand (never eval):
 *
 *   expr      := or
 *   or        := and ( OR and )*
 *   and       := not ( AND not )*
 *   not       := NOT not | predicate
 *   predicate := operand ( cmp operand | IS [NOT] NULL | [NOT] IN ( literal, ... ) )?
 *   cmp       := = | <> | != | < | <= | > | >=
 *   operand   := column | literal | ( expr )
 *   column    := name (folded to lower case, as Postgres does) | "Quoted Name"
 *   literal   := 'string' ('' inside for a quote) | [-]number | TRUE | FALSE | NULL
 *
 * Semantics are SQL's: three-valued logic (a comparison with NULL is NULL, NOT NULL is NULL,
 * FALSE AND NULL is FALSE, TRUE OR NULL is TRUE) and a row passes only when the whole expression
 * is TRUE. Values compare by their column's type: integers and numeric exactly (decimal), float4
 * and float8 as the doubles Postgres compares (NaN equal to itself and above every number), bool,
 * text/varchar/name and char(n) (trailing spaces ignored) by code point (the C collation), and
 * uuid; no user-defined type (enum, domain), which Postgres refuses in row filters too. A quoted string compared
 * with a number, bool or uuid column is read as that type, as Postgres reads an untyped literal.
 *
 * Updates follow pgoutput's rule (Postgres 15, pgoutput_row_filter): with only a new row (the key
 * did not change, identity not FULL) the new row decides; with an old row too, both are tested:
 * neither passes -> nothing is sent; only the new one -> the update is sent as an insert; only the
 * old one -> as a delete; both -> an update. Unchanged TOASTed values of the new row are taken from
 * the old row where it has them. Deletes test the old row (the replica identity).
 */
import { UNCHANGED_TOAST, type RawTuple, type RelationInfo, type RowChange } from '../types.js';
import type { TypeLookup } from '../source/type-catalog.js';

export type CmpOp = '=' | '<>' | '<' | '<=' | '>' | '>=';

export type Literal =
  | { readonly kind: 'string'; readonly value: string }
  | { readonly kind: 'number'; readonly text: string }
  | { readonly kind: 'bool'; readonly value: boolean }
  | { readonly kind: 'null' };

export type Operand = { readonly kind: 'column'; readonly name: string } | { readonly kind: 'literal'; readonly value: Literal };

export type Expr =
  | { readonly kind: 'and' | 'or'; readonly left: Expr; readonly right: Expr }
  | { readonly kind: 'not'; readonly arg: Expr }
  | { readonly kind: 'cmp'; readonly op: CmpOp; readonly left: Operand; readonly right: Operand }
  | { readonly kind: 'isnull'; readonly negated: boolean; readonly arg: Operand }
  | { readonly kind: 'in'; readonly negated: boolean; readonly arg: Operand; readonly list: readonly Literal[] }
  | Operand;

/** What the in-process subset covers, for error messages. */
export const SUBSET_TEXT =
  'column names, quoted strings, numbers, TRUE/FALSE/NULL, = <> != < <= > >=, IS [NOT] NULL, [NOT] IN (...), AND, OR, NOT and parentheses';

export class FilterSyntaxError extends Error {}

type Token =
  | { t: 'ident'; v: string; quoted: boolean; at: number }
  | { t: 'string'; v: string; at: number }
  | { t: 'number'; v: string; at: number }
  | { t: 'op'; v: string; at: number }
  | { t: 'end'; at: number };

const KEYWORDS = new Set(['and', 'or', 'not', 'is', 'null', 'in', 'true', 'false']);

function tokenize(src: string): Token[] {
  const out: Token[] = [];
  let i = 0;
  const fail = (what: string): never => {
    throw new FilterSyntaxError(`${what} at character ${i + 1}`);
  };
  while (i < src.length) {
    const c = src[i]!;
    if (/\s/.test(c)) {
      i++;
    } else if (/[A-Za-z_]/.test(c)) {
      const m = /^[A-Za-z_][A-Za-z0-9_$]*/.exec(src.slice(i))![0];
      out.push({ t: 'ident', v: m.toLowerCase(), quoted: false, at: i });
      i += m.length;
    } else if (c === '"' || c === "'") {
      const start = i;
      let v = '';
      i++;
      for (;;) {
        if (i >= src.length) {
          i = start;
          fail(`unterminated ${c === '"' ? 'quoted name' : 'string'}`);
        }
        if (src[i] === c) {
          if (src[i + 1] === c) {
            v += c;
            i += 2;
            continue;
          }
          i++;
          break;
        }
        v += src[i];
        i++;
      }
      if (c === '"') {
        if (v === '') fail('an empty quoted name');
        out.push({ t: 'ident', v, quoted: true, at: start });
      } else out.push({ t: 'string', v, at: start });
    } else if (/[0-9.]/.test(c)) {
      const m = /^(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?/.exec(src.slice(i));
      if (!m) fail(`unexpected "${c}"`);
      out.push({ t: 'number', v: m![0], at: i });
      i += m![0].length;
      if (i < src.length && /[A-Za-z_]/.test(src[i]!)) fail('a number directly followed by letters');
    } else {
      const two = src.slice(i, i + 2);
      if (two === '<>' || two === '!=' || two === '<=' || two === '>=') {
        out.push({ t: 'op', v: two === '!=' ? '<>' : two, at: i });
        i += 2;
      } else if ('=<>(),-'.includes(c)) {
        out.push({ t: 'op', v: c, at: i });
        i++;
      } else fail(`"${c}" is not supported`);
    }
  }
  out.push({ t: 'end', at: src.length });
  return out;
}

/** Parse `src` into the subset's syntax tree; a FilterSyntaxError says where and why not. */
export function parseFilter(src: string): Expr {
  const tokens = tokenize(src);
  let p = 0;
  const peek = () => tokens[p]!;
  const fail = (what: string, tok = peek()): never => {
    throw new FilterSyntaxError(`${what} at character ${tok.at + 1}`);
  };
  const isKw = (tok: Token, kw: string) => tok.t === 'ident' && !tok.quoted && tok.v === kw;
  const isOp = (tok: Token, op: string) => tok.t === 'op' && tok.v === op;
  const describe = (tok: Token) => (tok.t === 'end' ? 'end of expression' : tok.t === 'string' ? `'${tok.v}'` : `"${tok.v}"`);

  const or = (): Expr => {
    let left = and();
    while (isKw(peek(), 'or')) {
      p++;
      left = { kind: 'or', left, right: and() };
    }
    return left;
  };
  const and = (): Expr => {
    let left = not();
    while (isKw(peek(), 'and')) {
      p++;
      left = { kind: 'and', left, right: not() };
    }
    return left;
  };
  const not = (): Expr => {
    if (isKw(peek(), 'not')) {
      p++;
      return { kind: 'not', arg: not() };
    }
    return predicate();
  };
  const literal = (): Literal | null => {
    const tok = peek();
    if (tok.t === 'string') {
      p++;
      return { kind: 'string', value: tok.v };
    }
    if (tok.t === 'number') {
      p++;
      return { kind: 'number', text: tok.v };
    }
    const after = tokens[p + 1]!;
    if (isOp(tok, '-') && after.t === 'number') {
      p += 2;
      return { kind: 'number', text: '-' + after.v };
    }
    if (isKw(tok, 'true') || isKw(tok, 'false')) {
      p++;
      return { kind: 'bool', value: tok.t === 'ident' && tok.v === 'true' };
    }
    if (isKw(tok, 'null')) {
      p++;
      return { kind: 'null' };
    }
    return null;
  };
  /** An operand, or a parenthesized expression. */
  const primary = (): Expr => {
    const tok = peek();
    if (isOp(tok, '(')) {
      p++;
      const inner = or();
      if (!isOp(peek(), ')')) fail(`expected ")" but found ${describe(peek())}`);
      p++;
      return inner;
    }
    const lit = literal();
    if (lit) return { kind: 'literal', value: lit };
    if (tok.t === 'ident' && (tok.quoted || !KEYWORDS.has(tok.v))) {
      p++;
      if (isOp(peek(), '(')) fail(`function calls (${tok.v}(...)) are not supported`, tok);
      return { kind: 'column', name: tok.v };
    }
    return fail(`expected a column, a literal or "(" but found ${describe(tok)}`);
  };
  const asOperand = (e: Expr, tok: Token): Operand => {
    if (e.kind === 'column' || e.kind === 'literal') return e;
    return fail('a comparison needs a column or a literal on each side', tok);
  };
  const predicate = (): Expr => {
    const startTok = peek();
    const left = primary();
    const tok = peek();
    if (tok.t === 'op' && ['=', '<>', '<', '<=', '>', '>='].includes(tok.v)) {
      p++;
      const rightTok = peek();
      const right = asOperand(primary(), rightTok);
      return { kind: 'cmp', op: tok.v as CmpOp, left: asOperand(left, startTok), right };
    }
    if (isKw(tok, 'is')) {
      p++;
      let negated = false;
      if (isKw(peek(), 'not')) {
        p++;
        negated = true;
      }
      if (!isKw(peek(), 'null')) fail(`expected NULL after IS${negated ? ' NOT' : ''} but found ${describe(peek())}`);
      p++;
      return { kind: 'isnull', negated, arg: asOperand(left, startTok) };
    }
    let negated = false;
    if (isKw(tok, 'not') && isKw(tokens[p + 1]!, 'in')) {
      p++;
      negated = true;
    }
    if (isKw(peek(), 'in')) {
      p++;
      if (!isOp(peek(), '(')) fail(`expected "(" after IN but found ${describe(peek())}`);
      p++;
      const list: Literal[] = [];
      for (;;) {
        const lit = literal();
        if (!lit) fail(`IN (...) takes literals only; found ${describe(peek())}`);
        list.push(lit!);
        if (isOp(peek(), ',')) {
          p++;
          continue;
        }
        if (isOp(peek(), ')')) {
          p++;
          break;
        }
        fail(`expected "," or ")" but found ${describe(peek())}`);
      }
      return { kind: 'in', negated, arg: asOperand(left, startTok), list };
    }
    return left;
  };

  if (peek().t === 'end') fail('an empty expression');
  const expr = or();
  if (peek().t !== 'end') fail(`unexpected ${describe(peek())}`);
  return expr;
}

/** Column names an expression refers to. */
export function filterColumns(e: Expr, out = new Set<string>()): Set<string> {
  switch (e.kind) {
    case 'and':
    case 'or':
      filterColumns(e.left, out);
      filterColumns(e.right, out);
      break;
    case 'not':
      filterColumns(e.arg, out);
      break;
    case 'cmp':
      filterColumns(e.left, out);
      filterColumns(e.right, out);
      break;
    case 'isnull':
    case 'in':
      filterColumns(e.arg, out);
      break;
    case 'column':
      out.add(e.name);
      break;
    case 'literal':
      break;
  }
  return out;
}

/**
 * A light lexical check of a `where` text that goes into SQL as it is (pgoutput): one expression,
 * nothing that could end the statement or hide the rest of it. Returns the problem, or null.
 */
export function sqlExpressionProblem(src: string): string | null {
  if (src.trim() === '') return 'an empty expression';
  let depth = 0;
  for (let i = 0; i < src.length; i++) {
    const c = src[i]!;
    if (c === "'" && /[eE]/.test(src[i - 1] ?? '') && !/[A-Za-z0-9_$]/.test(src[i - 2] ?? '')) {
      // Backslash escapes would let a quote hide inside a string this scan sees as closed.
      return `an escape string (E'...') at character ${i}: use a standard string ('' for a quote)`;
    } else if (c === "'" || c === '"') {
      const close = src.indexOf(c, i + 1);
      if (close < 0) return `unterminated ${c === '"' ? 'quoted name' : 'string'} at character ${i + 1}`;
      i = close; // a doubled quote is two adjacent strings to this scan: still balanced
    } else if (c === ';') return `";" at character ${i + 1}: one expression only`;
    else if (src.startsWith('--', i) || src.startsWith('/*', i)) return `a comment at character ${i + 1}`;
    else if (c === '$') return `"$" at character ${i + 1}: dollar quotes and parameters are not supported`;
    else if (c === '(') depth++;
    else if (c === ')' && --depth < 0) return `an unmatched ")" at character ${i + 1}`;
  }
  return depth === 0 ? null : 'an unclosed "("';
}

// ---- evaluation -------------------------------------------------------------------------------

type Tri = boolean | null;
type ValueClass = 'int' | 'numeric' | 'float4' | 'float8' | 'bool' | 'text' | 'bpchar' | 'uuid';

const BUILTIN_CLASS: Readonly<Record<number, ValueClass>> = {
  20: 'int', 21: 'int', 23: 'int', 26: 'int', 1700: 'numeric', 700: 'float4', 701: 'float8',
  16: 'bool', 25: 'text', 1043: 'text', 19: 'text', 1042: 'bpchar', 2950: 'uuid',
};

/**
 * Builtin types only: Postgres refuses user-defined types (enums, domains) in a publication row
 * filter ("invalid publication WHERE expression"), and the same filter must mean the same with
 * both plugins.
 */
function classOf(oid: number): ValueClass | null {
  return BUILTIN_CLASS[oid] ?? null;
}

/** A value ready to compare: decimals as [BigInt mantissa, scale], floats as numbers, else text. */
type Value = { c: 'dec'; m: bigint; s: number; nan: boolean } | { c: 'num'; v: number } | { c: 'bool'; v: boolean } | { c: 'str'; v: string };

const DECIMAL = /^\s*([+-])?(\d*)(?:\.(\d*))?(?:[eE]([+-]?\d+))?\s*$/;

function decimal(text: string): Value | undefined {
  if (/^\s*nan\s*$/i.test(text)) return { c: 'dec', m: 0n, s: 0, nan: true };
  const m = DECIMAL.exec(text);
  if (!m || (m[2] === '' && (m[3] ?? '') === '')) return undefined;
  const frac = m[3] ?? '';
  let mant = BigInt((m[2] || '0') + frac);
  if (m[1] === '-') mant = -mant;
  return { c: 'dec', m: mant, s: frac.length - Number(m[4] ?? 0), nan: false };
}

function compareDec(a: Extract<Value, { c: 'dec' }>, b: Extract<Value, { c: 'dec' }>): number {
  if (a.nan || b.nan) return a.nan && b.nan ? 0 : a.nan ? 1 : -1; // NaN sorts above every number
  const s = Math.max(a.s, b.s);
  const x = a.m * 10n ** BigInt(s - a.s);
  const y = b.m * 10n ** BigInt(s - b.s);
  return x < y ? -1 : x > y ? 1 : 0;
}

function compareNum(a: number, b: number): number {
  if (Number.isNaN(a) || Number.isNaN(b)) return Number.isNaN(a) && Number.isNaN(b) ? 0 : Number.isNaN(a) ? 1 : -1;
  return a < b ? -1 : a > b ? 1 : 0;
}

/** Code point order (UTF-8 byte order, the C collation), not UTF-16 unit order. */
function compareStr(a: string, b: string): number {
  if (a === b) return 0;
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) {
    const x = a.codePointAt(i)!;
    const y = b.codePointAt(i)!;
    if (x !== y) return x < y ? -1 : 1;
    if (x > 0xffff) i++;
  }
  return a.length < b.length ? -1 : a.length > b.length ? 1 : 0;
}

const TRUE_WORDS = ['t', 'true', 'y', 'yes', 'on', '1'];
const FALSE_WORDS = ['f', 'false', 'n', 'no', 'off', '0'];

/** A column's text as a comparable value of its class; undefined when the text is not one. */
function fromText(cls: ValueClass, text: string): Value | undefined {
  switch (cls) {
    case 'int':
    case 'numeric':
      return decimal(text);
    case 'float4':
    case 'float8': {
      const t = text.trim().toLowerCase();
      const v = t === 'nan' ? NaN : t === 'infinity' || t === '+infinity' ? Infinity : t === '-infinity' ? -Infinity : DECIMAL.test(t) ? Number(t) : undefined;
      if (v === undefined) return undefined;
      return { c: 'num', v: cls === 'float4' ? Math.fround(v) : v };
    }
    case 'bool': {
      const t = text.trim().toLowerCase();
      if (TRUE_WORDS.includes(t)) return { c: 'bool', v: true };
      if (FALSE_WORDS.includes(t)) return { c: 'bool', v: false };
      return undefined;
    }
    case 'bpchar':
      return { c: 'str', v: text.replace(/ +$/, '') };
    case 'uuid': {
      const t = text.trim().toLowerCase().replace(/[{}-]/g, '');
      return /^[0-9a-f]{32}$/.test(t) ? { c: 'str', v: t } : undefined;
    }
    case 'text':
      return { c: 'str', v: text };
  }
}

/** A literal read as a value of `cls` (Postgres' coercion of an untyped literal); a message when it cannot be. */
function literalAs(cls: ValueClass, lit: Literal, column: string): Value | null | string {
  if (lit.kind === 'null') return null;
  const numeric = cls === 'int' || cls === 'numeric' || cls === 'float4' || cls === 'float8';
  if (lit.kind === 'number') {
    if (!numeric) return `column ${column} (${cls}) cannot be compared with the number ${lit.text}; quote it as a string`;
    if (cls === 'float4' || cls === 'float8') return { c: 'num', v: Number(lit.text) };
    return decimal(lit.text)!;
  }
  if (lit.kind === 'bool') {
    if (cls !== 'bool') return `column ${column} (${cls}) cannot be compared with ${lit.value ? 'TRUE' : 'FALSE'}`;
    return { c: 'bool', v: lit.value };
  }
  const v = fromText(cls, lit.value);
  // A quoted literal takes the column's type (a float4 column's '0.1' is the float4 0.1); a bare
  // number is numeric and meets a float column as float8, as in Postgres.
  if (v === undefined) return `'${lit.value}' is not a valid ${cls} value for column ${column}`;
  return v;
}

function compareValues(a: Value, b: Value): number {
  if (a.c === 'dec' && b.c === 'dec') return compareDec(a, b);
  if (a.c === 'str' && b.c === 'str') return compareStr(a.v, b.v);
  if (a.c === 'bool' && b.c === 'bool') return a.v === b.v ? 0 : a.v ? 1 : -1;
  const num = (v: Value) => (v.c === 'num' ? v.v : v.c === 'dec' ? (v.nan ? NaN : Number(v.m) / 10 ** v.s) : NaN);
  return compareNum(num(a), num(b));
}

function cmpResult(op: CmpOp, c: number): boolean {
  switch (op) {
    case '=':
      return c === 0;
    case '<>':
      return c !== 0;
    case '<':
      return c < 0;
    case '<=':
      return c <= 0;
    case '>':
      return c > 0;
    case '>=':
      return c >= 0;
  }
}

/** A problem that makes a filter unusable for a table (exit 2: a configuration error). */
export class FilterTableError extends Error {}

type Eval = (row: RawTuple) => Tri;

/** Compile `expr` for one relation; throws FilterTableError naming what does not fit. */
function compileExpr(expr: Expr, rel: RelationInfo, types: TypeLookup): Eval {
  const index = (name: string) => {
    const i = rel.columns.findIndex((c) => c.name === name);
    if (i < 0) throw new FilterTableError(`column "${name}" does not exist in ${rel.schema}.${rel.table}`);
    return i;
  };
  const classAt = (i: number) => {
    const col = rel.columns[i]!;
    const cls = classOf(col.typeOid);
    if (!cls) {
      throw new FilterTableError(
        `column "${col.name}" of ${rel.schema}.${rel.table} has type ${types.get(col.typeOid)?.name ?? col.typeOid}, which in-process row filters do not compare ` +
          '(supported: integer types, numeric, real, double precision, boolean, text, varchar, char, name, uuid; Postgres allows no user-defined type, enum or domain, in a row filter)',
      );
    }
    return cls;
  };
  const raw = (row: RawTuple, i: number): string | null => {
    const v = row[i];
    return typeof v === 'string' ? v : null; // NULL, not sent, or an unknown TOASTed value
  };
  const operandValue = (o: Operand, cls: ValueClass | null, peer: string): ((row: RawTuple) => Value | null) => {
    if (o.kind === 'column') {
      const i = index(o.name);
      const c = classAt(i);
      return (row) => {
        const t = raw(row, i);
        return t === null ? null : (fromText(c, t) ?? null);
      };
    }
    if (cls === null) {
      // Two literals: compare them as they are.
      const lit = o.value;
      const v: Value | null = lit.kind === 'null' ? null : lit.kind === 'number' ? decimal(lit.text)! : lit.kind === 'bool' ? { c: 'bool', v: lit.value } : { c: 'str', v: lit.value };
      return () => v;
    }
    const v = literalAs(cls, o.value, peer);
    if (typeof v === 'string') throw new FilterTableError(v);
    return () => v;
  };
  const go = (e: Expr): Eval => {
    switch (e.kind) {
      case 'and': {
        const l = go(e.left);
        const r = go(e.right);
        return (row) => {
          const a = l(row);
          if (a === false) return false;
          const b = r(row);
          if (b === false) return false;
          return a === null || b === null ? null : true;
        };
      }
      case 'or': {
        const l = go(e.left);
        const r = go(e.right);
        return (row) => {
          const a = l(row);
          if (a === true) return true;
          const b = r(row);
          if (b === true) return true;
          return a === null || b === null ? null : false;
        };
      }
      case 'not': {
        const a = go(e.arg);
        return (row) => {
          const v = a(row);
          return v === null ? null : !v;
        };
      }
      case 'isnull': {
        if (e.arg.kind === 'literal') {
          const isNull = e.arg.value.kind === 'null';
          return () => isNull !== e.negated;
        }
        const i = index(e.arg.name);
        return (row) => (raw(row, i) === null) !== e.negated;
      }
      case 'cmp': {
        const lc = e.left.kind === 'column' ? classAt(index(e.left.name)) : null;
        const rc = e.right.kind === 'column' ? classAt(index(e.right.name)) : null;
        if (lc && rc && !sameFamily(lc, rc)) {
          throw new FilterTableError(`columns of types ${lc} and ${rc} cannot be compared (${describeCmp(e)})`);
        }
        const cls = lc ?? rc;
        const l = operandValue(e.left, cls, e.right.kind === 'column' ? e.right.name : '');
        const r = operandValue(e.right, cls, e.left.kind === 'column' ? e.left.name : '');
        const op = e.op;
        return (row) => {
          const a = l(row);
          const b = r(row);
          return a === null || b === null ? null : cmpResult(op, compareValues(a, b));
        };
      }
      case 'in': {
        const cls = e.arg.kind === 'column' ? classAt(index(e.arg.name)) : null;
        const a = operandValue(e.arg, cls, '');
        const items = e.list.map((lit) => operandValue({ kind: 'literal', value: lit }, cls, e.arg.kind === 'column' ? e.arg.name : ''));
        const negated = e.negated;
        return (row) => {
          const v = a(row);
          if (v === null) return null;
          let sawNull = false;
          for (const item of items) {
            const w = item(row);
            if (w === null) sawNull = true;
            else if (compareValues(v, w) === 0) return !negated;
          }
          return sawNull ? null : negated;
        };
      }
      case 'column': {
        const i = index(e.name);
        if (classAt(i) !== 'bool') throw new FilterTableError(`column "${e.name}" is not boolean and cannot stand alone as a condition`);
        return (row) => {
          const t = raw(row, i);
          return t === null ? null : (fromText('bool', t) as { v: boolean } | undefined)?.v ?? null;
        };
      }
      case 'literal': {
        const lit = e.value;
        if (lit.kind === 'bool') return () => lit.value;
        if (lit.kind === 'null') return () => null;
        throw new FilterTableError(`a ${lit.kind} literal cannot stand alone as a condition`);
      }
    }
  };
  return go(expr);
}

const NUMERIC_FAMILY: readonly ValueClass[] = ['int', 'numeric', 'float4', 'float8'];
const sameFamily = (a: ValueClass, b: ValueClass) => a === b || (NUMERIC_FAMILY.includes(a) && NUMERIC_FAMILY.includes(b)) || (['text', 'bpchar'].includes(a) && ['text', 'bpchar'].includes(b));
const describeCmp = (e: { left: Operand; op: string; right: Operand }) => `${operandText(e.left)} ${e.op} ${operandText(e.right)}`;
const operandText = (o: Operand) => (o.kind === 'column' ? o.name : o.value.kind === 'string' ? `'${o.value.value}'` : o.value.kind === 'number' ? o.value.text : o.value.kind === 'bool' ? String(o.value.value).toUpperCase() : 'NULL');

/** One table's compiled filter: applies pgoutput's rules to a row change. */
export class TableRowFilter {
  private readonly test: Eval;
  private readonly identity: readonly number[];

  /**
   * `identityRule`: updates or deletes are published, so (as Postgres requires of publication row
   * filters) only replica identity columns may be used unless the identity is FULL.
   */
  constructor(expr: Expr, rel: RelationInfo, types: TypeLookup, identityRule: boolean) {
    this.test = compileExpr(expr, rel, types);
    this.identity = rel.columns.flatMap((c, i) => (c.inReplicaIdentity ? [i] : []));
    if (identityRule && rel.replicaIdentity !== 'full' && this.identity.length > 0) {
      const outside = [...filterColumns(expr)].filter((name) => !rel.columns.find((c) => c.name === name)?.inReplicaIdentity);
      if (outside.length > 0) {
        throw new FilterTableError(
          `column${outside.length > 1 ? 's' : ''} ${outside.join(', ')} of ${rel.schema}.${rel.table} ${outside.length > 1 ? 'are' : 'is'} not part of its replica identity, ` +
            'and Postgres allows only replica identity columns in a row filter when updates or deletes are published: ' +
            `use only key columns, or ALTER TABLE ${rel.schema}.${rel.table} REPLICA IDENTITY FULL, or publish only inserts`,
        );
      }
    }
  }

  /** The change to publish (an update possibly turned into an insert or a delete), or null. */
  apply(change: RowChange): RowChange | null {
    switch (change.op) {
      case 'insert':
        return change.new && this.test(change.new) === true ? change : null;
      case 'delete':
        return change.old && this.test(change.old) === true ? change : null;
      case 'update': {
        const old = change.old;
        const next = change.new;
        if (!next) return null;
        const hasOld = old !== null && (change.oldKind === 'full' || (change.oldKind === 'key' && !this.sameIdentity(old, next)));
        if (!hasOld) return this.test(next) === true ? change : null;
        const filled = fillFromOld(next, old!);
        const oldMatch = this.test(old!) === true;
        const newMatch = this.test(filled) === true;
        if (!oldMatch && !newMatch) return null;
        if (!oldMatch) return { kind: 'change', op: 'insert', relation: change.relation, old: null, oldKind: 'none', new: filled };
        if (!newMatch) return { kind: 'change', op: 'delete', relation: change.relation, old: old!, oldKind: change.oldKind, new: null };
        return filled === next ? change : { ...change, new: filled };
      }
    }
  }

  private sameIdentity(old: RawTuple, next: RawTuple): boolean {
    return this.identity.every((i) => next[i] === UNCHANGED_TOAST || next[i] === old[i]);
  }
}

/** Unchanged TOASTed values of `next` that `old` carries, copied in (pgoutput does the same). */
function fillFromOld(next: RawTuple, old: RawTuple): RawTuple {
  let out: Array<RawTuple[number]> | null = null;
  for (let i = 0; i < next.length; i++) {
    if (next[i] === UNCHANGED_TOAST && typeof old[i] === 'string') {
      out ??= [...next];
      out[i] = old[i];
    }
  }
  return out ?? next;
}
