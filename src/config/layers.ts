/**
 * Where raw option text comes from, one function per layer. Each returns the text and a label
 * naming the setting the way the operator wrote it, so an error points at the right place:
 * `--slot`, `PGWARREN_SLOT (--slot)`, `PGWARREN_SLOT_FILE (--slot), file /run/secrets/slot`,
 * `DATABASE_URL (fallback for PGWARREN_DATABASE_URL)`, `/etc/pgwarren.yaml: slot`.
 */
import { readFileSync } from 'node:fs';
import { OPTIONS, type AnyOption, type OptionName, type OptionSpec } from './options.js';
import { closest } from './suggest.js';
import { quote } from './validators.js';

export interface Raw {
  readonly value: string;
  readonly label: string;
}

const camelCase = (kebab: string) => kebab.replace(/-([a-z])/g, (_, c: string) => c.toUpperCase());
const FLAG_KEYS: ReadonlyMap<string, AnyOption> = new Map(OPTIONS.flatMap((o) => [[o.name, o] as const, [camelCase(o.name), o] as const]));
// What yargs puts in argv besides options; harmless when a caller hands over the whole argv.
const YARGS_KEYS = new Set(['_', '$0']);

/** The flags the user passed, keyed by option name; kebab-case and camelCase keys both work. */
export function flagLayer(flags: Readonly<Record<string, unknown>>, problems: string[]): Map<OptionName, Raw> {
  const out = new Map<OptionName, Raw>();
  for (const [key, value] of Object.entries(flags)) {
    if (value === undefined || YARGS_KEYS.has(key)) continue;
    const spec = FLAG_KEYS.get(key);
    if (!spec) {
      const guess = closest(key, OPTIONS.map((o) => o.name));
      problems.push(`--${key}: not a pgwarren option${guess ? `; did you mean --${guess}?` : ''}`);
      continue;
    }
    if (out.has(spec.name)) continue; // yargs hands over both spellings of the same flag
    const label = `--${spec.name}`;
    if (typeof value === 'string' || typeof value === 'number' || typeof value === 'bigint') out.set(spec.name, { value: String(value), label });
    else if (Array.isArray(value)) problems.push(`${label}: given ${value.length} times; give it once (lists are comma-separated)`);
    else problems.push(`${label}: needs a value`);
  }
  return out;
}

/** PGWARREN_X, or the contents of the file PGWARREN_X_FILE names (Docker secrets). */
export function envLayer(env: NodeJS.ProcessEnv, spec: OptionSpec, resolvePath: (p: string) => string, problems: string[]): Raw | undefined {
  const direct = env[spec.env];
  const fileVar = `${spec.env}_FILE`;
  const file = env[fileVar];
  // Empty counts as unset: compose files often carry `PGWARREN_X=` placeholders.
  const hasDirect = direct !== undefined && direct !== '';
  const hasFile = file !== undefined && file !== '';
  if (hasDirect && hasFile) {
    problems.push(`${spec.env} and ${fileVar} are both set; set only one of them`);
    return undefined;
  }
  if (hasFile) {
    const path = resolvePath(file);
    try {
      // Secret files usually end in a newline that is not part of the value.
      return { value: readFileSync(path, 'utf8').replace(/[\r\n]+$/, ''), label: `${fileVar} (--${spec.name}), file ${path}` };
    } catch (err) {
      problems.push(`${fileVar}: cannot read ${quote(path)} (${errorCode(err)}); expected a readable file holding the value of ${spec.env}`);
      return undefined;
    }
  }
  return hasDirect ? { value: direct, label: `${spec.env} (--${spec.name})` } : undefined;
}

/** Conventional variables (DATABASE_URL, AMQP_URL) used when PGWARREN_X is absent. */
export function fallbackLayer(env: NodeJS.ProcessEnv, spec: OptionSpec): Raw | undefined {
  for (const name of spec.fallbacks ?? []) {
    const value = env[name];
    if (value !== undefined && value !== '') return { value, label: `${name} (fallback for ${spec.env})` };
  }
  return undefined;
}

export function defaultLayer(spec: OptionSpec): Raw | undefined {
  return spec.default === undefined ? undefined : { value: spec.default, label: `default of --${spec.name}` };
}

const KNOWN_ENV = OPTIONS.flatMap((o) => [o.env, `${o.env}_FILE`]);
const KNOWN_ENV_SET = new Set(KNOWN_ENV);

/** A misspelt PGWARREN_ variable would otherwise be silently ignored. */
export function checkUnknownEnv(env: NodeJS.ProcessEnv, problems: string[]): void {
  for (const key of Object.keys(env).sort()) {
    // PGWARREN_TEST_* belong to the test harness, not to the daemon.
    if (!key.startsWith('PGWARREN_') || key.startsWith('PGWARREN_TEST_') || KNOWN_ENV_SET.has(key)) continue;
    const guess = closest(key, KNOWN_ENV);
    problems.push(`${key} is not a pgwarren setting${guess ? `; did you mean ${guess}?` : ''}`);
  }
}

export function errorCode(err: unknown): string {
  const e = err as NodeJS.ErrnoException;
  return e.code ?? e.message ?? String(err);
}
