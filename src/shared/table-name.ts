/**
 * Table names and table globs.
 *
 * A table is the pair (schema, table). Postgres identifiers may hold any character but NUL, dots
 * included, so `"a.b"."c"` and `"a"."b.c"` are two tables with the same `schema.table` text.
 * Hence: wherever a table is a key (caches, maps, sets), the key is `tableKey` (the two names
 * joined by NUL); wherever a table is shown (logs, metric labels, bulk event ids) it is
 * `tableName`, which double-quotes a name only when it needs it, so ordinary names read as
 * before and every table's text is distinct and is a glob matching just that table.
 *
 * Glob syntax (README "Table globs"): a schema pattern, a dot, a table pattern. In a pattern,
 * `*` is any run of characters and `?` one character; a double-quoted part is literal, with `""`
 * for a quote inside it, as Postgres quotes identifiers: `"a.b".c`, `a."b.c"`, `public."x*"`.
 * Unquoted text may not hold a dot, a quote, a comma or white space. Matching is on the names as
 * stored (case-sensitive, no folding), each part separately.
 */

/** A table as a map key: no two tables share one. */
export type TableKey = string & { readonly __tableKey: true };

export function tableKey(schema: string, table: string): TableKey {
  return `${schema}\u0000${table}` as TableKey;
}

/** Characters that make a name need quoting to be read back as itself in a glob. */
const NEEDS_QUOTES = /[."*?,\s]/;

function namePart(name: string): string {
  return name === '' || NEEDS_QUOTES.test(name) ? `"${name.replace(/"/g, '""')}"` : name;
}

/** `schema.table`, each name double-quoted only if it holds a dot, quote, `*`, `?`, comma or space. */
export function tableName(schema: string, table: string): string {
  return `${namePart(schema)}.${namePart(table)}`;
}

/** `tableName` of a key (for logs of what is kept by key). */
export function tableNameOfKey(key: TableKey): string {
  const nul = key.indexOf('\u0000');
  return tableName(key.slice(0, nul), key.slice(nul + 1));
}

/** One side of a glob: literal text and wildcards, in order. */
export type GlobToken = { readonly literal: string } | { readonly wildcard: '*' | '?' };

export interface GlobPattern {
  readonly tokens: readonly GlobToken[];
  readonly regex: RegExp;
}

export interface TableGlob {
  readonly text: string;
  readonly schema: GlobPattern;
  readonly table: GlobPattern;
}

/** A glob that does not parse; the message is a finished sentence naming the glob. */
export class GlobSyntaxError extends Error {}

export const GLOB_EXPECTED =
  'a schema.table glob (one dot between schema and table, * and ? wildcards, double quotes around a name holding a dot or other special character: public.*, *.orders, "my.schema".orders)';

function pattern(tokens: GlobToken[]): GlobPattern {
  let body = '';
  for (const t of tokens) {
    if ('literal' in t) body += t.literal.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&');
    else body += t.wildcard === '*' ? '.*' : '.';
  }
  // s: a wildcard matches a newline too (names may hold one); u: `?` is one character, not half of one.
  return { tokens, regex: new RegExp(`^${body}$`, 'su') };
}

/** Parse a table glob; throws GlobSyntaxError. */
export function parseTableGlob(text: string): TableGlob {
  const fail = (why: string): never => {
    throw new GlobSyntaxError(`${JSON.stringify(text)} is not ${GLOB_EXPECTED}: ${why}`);
  };
  const parts: GlobToken[][] = [[]];
  let i = 0;
  const push = (token: GlobToken) => {
    const tokens = parts[parts.length - 1]!;
    const last = tokens[tokens.length - 1];
    if ('literal' in token && last && 'literal' in last) tokens[tokens.length - 1] = { literal: last.literal + token.literal };
    else tokens.push(token);
  };
  while (i < text.length) {
    const c = text[i]!;
    if (c === '"') {
      let name = '';
      i++;
      for (;;) {
        if (i >= text.length) fail('a double quote is not closed');
        if (text[i] === '"') {
          if (text[i + 1] === '"') {
            name += '"';
            i += 2;
            continue;
          }
          i++;
          break;
        }
        name += text[i++];
      }
      if (name === '') fail('a quoted name is empty');
      push({ literal: name });
      continue;
    }
    if (c === '.') {
      if (parts.length === 2) fail('more than one dot outside double quotes (quote a name that holds a dot)');
      parts.push([]);
      i++;
      continue;
    }
    if (c === ',' || /\s/u.test(c)) fail(`${c === ',' ? 'a comma' : 'white space'} outside double quotes`);
    push(c === '*' || c === '?' ? { wildcard: c } : { literal: c });
    i++;
  }
  if (parts.length < 2) fail('no dot between schema and table');
  if (parts[0]!.length === 0) fail('the schema pattern is empty');
  if (parts[1]!.length === 0) fail('the table pattern is empty');
  return { text, schema: pattern(parts[0]!), table: pattern(parts[1]!) };
}

export function globMatches(glob: TableGlob, schema: string, table: string): boolean {
  return glob.schema.regex.test(schema) && glob.table.regex.test(table);
}

/** Split a comma-separated list of globs: commas inside double quotes belong to a name. */
export function splitGlobList(text: string): string[] {
  const items: string[] = [];
  let current = '';
  let quoted = false;
  for (const c of text) {
    if (c === '"') quoted = !quoted; // "" inside quotes toggles twice: still quoted
    if (c === ',' && !quoted) {
      items.push(current);
      current = '';
    } else current += c;
  }
  items.push(current);
  return items.map((s) => s.trim()).filter((s) => s.length > 0);
}
