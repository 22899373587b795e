/**
 * The optional config file (PGWARREN_CONFIG / --config): YAML, or JSON (which YAML reads too).
 * Top-level keys are option names in kebab-case plus `rules:`, a list of per-table overrides.
 *
 * Scalars are taken as their source text, not as YAML's typed values, so `slot: 007` stays
 * "007" and every value goes through the same parser as a flag or an env var.
 */
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import type { Document } from 'yaml';
import { z } from 'zod';
import type { Raw } from './layers.js';
import { errorCode } from './layers.js';
import { OPTIONS, findOption, type OptionName } from './options.js';
import { closest } from './suggest.js';
import { boolean, exchangeName, glob, integer, routingKey } from './validators.js';

/** Overrides for the tables `match` selects; the first matching rule wins. */
export interface TableRule {
  /** schema.table glob */
  readonly match: string;
  readonly routingKey?: string;
  readonly exchange?: string;
  /** Columns left out of `key`, `old`, `new` and `changed`. */
  readonly excludeColumns?: readonly string[];
  /** AMQP per-message expiration, milliseconds. */
  readonly ttl?: number;
  readonly floodThreshold?: number;
  /** Row filter: an SQL boolean expression (README "Shaping the stream"). */
  readonly where?: string;
  readonly skipUnchanged?: boolean;
}

export interface ConfigFile {
  readonly options: ReadonlyMap<OptionName, Raw>;
  readonly rules: readonly TableRule[];
}

type Yaml = typeof import('yaml');
let yamlModule: Yaml | undefined;
/**
 * The YAML library, loaded with the first config file: most deployments configure pgwarren by
 * environment only, and loading it cost every start (and every CLI command) about 25 ms of CPU.
 */
function yaml(): Yaml {
  return (yamlModule ??= createRequire(import.meta.url)('yaml') as Yaml);
}

type Plain = string | null | Plain[] | { [key: string]: Plain };

const EMPTY: ConfigFile = { options: new Map(), rules: [] };

/** `label` names where the path came from, for the "cannot read" message. */
export function readConfigFile(path: string, label: string, problems: string[]): ConfigFile {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    problems.push(`${label}: cannot read ${JSON.stringify(path)} (${errorCode(err)}); expected a YAML or JSON file`);
    return EMPTY;
  }
  const doc = yaml().parseDocument(text);
  if (doc.errors.length > 0) {
    const lines = text.split('\n');
    for (const err of doc.errors) {
      // First line only: later lines quote the file, which may hold a password.
      const line = err.linePos?.[0]?.line;
      const braces = line !== undefined && /:\s*\{/.test(lines[line - 1] ?? '');
      const hint = braces ? ' (a value starting with { must be quoted: routing-key: "{schema}.{table}")' : '';
      problems.push(`${path}: not valid YAML or JSON: ${err.message.split('\n')[0]}${hint}`);
    }
    return EMPTY;
  }
  const top = plain(doc.contents, doc);
  if (top === null) return EMPTY;
  if (typeof top === 'string' || Array.isArray(top)) {
    problems.push(`${path}: expected a mapping of option names to values at the top level`);
    return EMPTY;
  }
  const options = new Map<OptionName, Raw>();
  let rules: TableRule[] = [];
  for (const [key, value] of Object.entries(top)) {
    if (key === 'rules') {
      rules = parseRules(path, value, problems);
      continue;
    }
    const spec = findOption(key);
    if (!spec || spec.name === 'config') {
      problems.push(`${path}: ${unknownKey(key)}`);
      continue;
    }
    const where = `${path}: ${key}`;
    if (value === null) continue; // `key:` with nothing after it leaves the setting alone
    if (typeof value === 'string') options.set(spec.name, { value, label: where });
    else if (Array.isArray(value) && (spec.type === 'list' || spec.type === 'urls') && value.every((v) => typeof v === 'string')) {
      options.set(spec.name, { value: value.join(','), label: where });
    } else {
      const what = Array.isArray(value) ? 'a list' : 'a mapping';
      const hint = spec.name === 'routing-key' ? ' (a value starting with { must be quoted: routing-key: "{schema}.{table}")' : '';
      problems.push(`${where}: ${what} is not allowed here; expected a single value${hint}`);
    }
  }
  return { options, rules };
}

function unknownKey(key: string): string {
  if (key === 'config') return 'config cannot be set inside the config file';
  const kebab = key.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`).replace(/_/g, '-');
  if (findOption(kebab)) return `unknown key "${key}"; option keys are kebab-case: use "${kebab}"`;
  const guess = closest(key, [...OPTIONS.map((o) => o.name), 'rules']);
  return `unknown key "${key}"${guess ? `; did you mean "${guess}"?` : ''}`;
}

/** YAML nodes -> plain values holding each scalar's source text (null for YAML null). */
function plain(node: unknown, doc: Document): Plain {
  if (node === null || node === undefined) return null;
  const { isAlias, isMap, isScalar, isSeq } = yaml();
  if (isAlias(node)) return plain(node.resolve(doc), doc);
  if (isScalar(node)) return node.value === null ? null : (node.source ?? String(node.value));
  if (isSeq(node)) return node.items.map((item) => plain(item, doc));
  if (isMap(node)) {
    const out: { [key: string]: Plain } = {};
    for (const pair of node.items) out[String(plain(pair.key, doc))] = plain(pair.value, doc);
    return out;
  }
  return String(node);
}

// Rule fields, each with the same validation as the option it overrides.
const ruleSchema = z.object({
  match: glob,
  'routing-key': routingKey.optional(),
  exchange: exchangeName.optional(),
  'exclude-columns': z
    .array(z.string().trim().min(1, { error: 'an empty column name is not allowed' }))
    .min(1, { error: 'an empty list is not allowed; expected column names' })
    .optional(),
  // RabbitMQ takes per-message TTLs up to 2^32-1 ms.
  ttl: integer(1, 4294967295, 'a whole number of milliseconds from 1 to 4294967295').schema.optional(),
  'flood-threshold': integer(0).schema.optional(),
  where: z.string().trim().min(1, { error: 'an empty expression is not allowed; expected an SQL boolean expression' }).optional(),
  'skip-unchanged': boolean().schema.optional(),
});
const RULE_KEYS = Object.keys(ruleSchema.shape);

function parseRules(path: string, value: Plain, problems: string[]): TableRule[] {
  if (value === null) return [];
  if (!Array.isArray(value)) {
    problems.push(`${path}: rules: expected a list of rules, each a mapping like {match: public.orders, routing-key: "orders.{op}"}`);
    return [];
  }
  const rules: TableRule[] = [];
  value.forEach((entry, i) => {
    const where = `${path}: rules[${i}]`;
    if (entry === null || typeof entry === 'string' || Array.isArray(entry)) {
      problems.push(`${where}: expected a mapping with match and the settings it overrides (${RULE_KEYS.join(', ')})`);
      return;
    }
    const input: Record<string, Plain> = {};
    let ok = true;
    for (const [key, raw] of Object.entries(entry)) {
      if (!RULE_KEYS.includes(key)) {
        const guess = closest(key, RULE_KEYS);
        problems.push(`${where}: unknown key "${key}"${guess ? `; did you mean "${guess}"?` : ''}; allowed: ${RULE_KEYS.join(', ')}`);
        ok = false;
      } else if (raw !== null) {
        // A comma-separated string is accepted for exclude-columns, as for option lists.
        input[key] = key === 'exclude-columns' && typeof raw === 'string' ? raw.split(',').map((c) => c.trim()) : raw;
      }
    }
    const parsed = ruleSchema.safeParse(input);
    if (!parsed.success) {
      for (const issue of parsed.error.issues) problems.push(`${where}.${issue.path.join('.')}: ${issueText(issue, input[String(issue.path[0])])}`);
      return;
    }
    if (!ok) return;
    const r = parsed.data;
    // Absent fields stay absent (not `undefined`), so a rule reads back as it was written.
    rules.push({
      match: r.match,
      ...(r['routing-key'] !== undefined && { routingKey: r['routing-key'] }),
      ...(r.exchange !== undefined && { exchange: r.exchange }),
      ...(r['exclude-columns'] !== undefined && { excludeColumns: r['exclude-columns'] }),
      ...(r.ttl !== undefined && { ttl: r.ttl }),
      ...(r['flood-threshold'] !== undefined && { floodThreshold: r['flood-threshold'] }),
      ...(r.where !== undefined && { where: r.where }),
      ...(r['skip-unchanged'] !== undefined && { skipUnchanged: r['skip-unchanged'] }),
    });
  });
  return rules;
}

/** Own wording for missing fields and type mismatches; the validators word the rest. */
function issueText(issue: z.core.$ZodIssue, value: Plain | undefined): string {
  if (issue.code !== 'invalid_type') return issue.message;
  if (value === undefined) return 'missing; expected a schema.table glob naming the tables the rule applies to';
  const given = Array.isArray(value) ? 'a list' : typeof value === 'string' ? 'text' : 'a mapping';
  return `${given} is not allowed here; expected ${issue.expected === 'array' ? 'a list' : 'a single value'}`;
}
