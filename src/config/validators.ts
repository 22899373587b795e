/**
 * The value kinds options are made of. Each is a zod schema from the raw text (flag, env var,
 * secret file or config-file scalar all arrive as text) to the parsed value, whose every failure
 * carries a finished sentence: `"<value>" is not <what is expected>`. The loader only prefixes
 * the setting's name, so wording lives here, next to the rule it explains.
 */
import { z } from 'zod';
import { redactUrl } from '../shared/redact.js';
import { GlobSyntaxError, parseTableGlob, splitGlobList } from '../shared/table-name.js';

/** How the loader treats a value besides parsing it. */
export type OptionType = 'string' | 'integer' | 'seconds' | 'enum' | 'list' | 'url' | 'urls' | 'path';

export interface Kind<T> {
  readonly type: OptionType;
  readonly schema: z.ZodType<T, string>;
  /** The closed set of values (enums, and the elements of enum lists). */
  readonly allowed?: readonly string[];
}

export const quote = (value: unknown): string => JSON.stringify(typeof value === 'string' ? value : String(value));

/** zod error option: the sentence for a value that fails, secrets redacted. */
const isNot = (expected: string, redact = false) => ({
  error: (issue: { readonly input?: unknown }) => {
    const text = String(issue.input);
    return `${quote(redact ? redactUrl(text) : text)} is not ${expected}`;
  },
});

const isOneOf = (values: readonly string[], s: string): boolean => values.includes(s.toLowerCase());

function splitList(text: string): string[] {
  return text
    .split(',')
    .map((item) => item.trim())
    .filter((item) => item.length > 0);
}

export function text(pattern: RegExp, expected: string): Kind<string> {
  return { type: 'string', schema: z.string().trim().regex(pattern, isNot(expected)) };
}

export function integer(min: number, max = Number.MAX_SAFE_INTEGER, expected = range('a whole number', min, max)): Kind<number> {
  const message = isNot(expected);
  return {
    type: 'integer',
    schema: z.string().trim().regex(/^\d+$/, message).transform(Number).pipe(z.number().min(min, message).max(max, message)),
  };
}

// setTimeout overflows past 2^31-1 ms and then fires almost at once: cap timers below that.
const MAX_TIMER_SECONDS = 2_147_483;

/** A duration in seconds; decimals allowed (0.5). */
export function seconds(allowZero: boolean): Kind<number> {
  const expected = `a number of seconds ${allowZero ? '>= 0' : '> 0'} (at most ${MAX_TIMER_SECONDS})`;
  const message = isNot(expected);
  const number = z.number().max(MAX_TIMER_SECONDS, message);
  return {
    type: 'seconds',
    schema: z
      .string()
      .trim()
      .regex(/^\d+(\.\d+)?$/, message)
      .transform(Number)
      .pipe(allowZero ? number.min(0, message) : number.gt(0, message)),
  };
}

export function oneOf<const T extends readonly [string, ...string[]]>(values: T): Kind<T[number]> {
  return {
    type: 'enum',
    allowed: values,
    // Case-insensitive because INFO or Drop in an env file is an obvious intent, not a typo.
    schema: z
      .string()
      .trim()
      .refine((s) => isOneOf(values, s), isNot(`one of ${values.join(', ')}`))
      .transform((s) => s.toLowerCase() as T[number]),
  };
}

/** true or false (also yes/no, on/off, 1/0, any case). */
export function boolean(): Kind<boolean> {
  const yes = ['true', 'yes', 'on', '1'];
  const no = ['false', 'no', 'off', '0'];
  return {
    type: 'enum',
    allowed: ['true', 'false'],
    schema: z
      .string()
      .trim()
      .refine((s) => isOneOf([...yes, ...no], s), isNot('true or false'))
      .transform((s) => yes.includes(s.toLowerCase())),
  };
}

/** A non-empty comma-separated subset of `values`, duplicates removed, order kept. */
export function subsetOf<const T extends readonly [string, ...string[]]>(values: T): Kind<T[number][]> {
  return {
    type: 'list',
    allowed: values,
    schema: z
      .string()
      .transform(splitList)
      .pipe(
        z
          .array(z.string().refine((s) => isOneOf(values, s), isNot(`one of ${values.join(', ')}`)))
          .min(1, { error: `an empty list is not allowed; expected one or more of ${values.join(', ')}` }),
      )
      .transform((items) => [...new Set(items.map((s) => s.toLowerCase() as T[number]))]),
  };
}

/** `schema.table` globs (shared/table-name.ts): the parser's own sentence says what is wrong. */
export const glob = z
  .string()
  .trim()
  .superRefine((text, ctx) => {
    try {
      parseTableGlob(text);
    } catch (err) {
      if (!(err instanceof GlobSyntaxError)) throw err;
      ctx.addIssue({ code: 'custom', message: err.message });
    }
  });

export function globList(): Kind<string[]> {
  return { type: 'list', schema: z.string().transform(splitGlobList).pipe(z.array(glob)) };
}

const PLACEHOLDERS = ['db', 'schema', 'table', 'op'] as const;
const PLACEHOLDER_LIST = PLACEHOLDERS.map((p) => `{${p}}`).join(', ');

/** Routing key templates: literal text and the placeholders, braces reserved for placeholders. */
export const routingKey = z
  .string()
  .min(1, { error: `an empty routing key template is not allowed; expected text and placeholders ${PLACEHOLDER_LIST}` })
  .max(255, { error: (issue) => `${quote(issue.input)} is longer than the 255 characters AMQP allows for a routing key` })
  .superRefine((template, ctx) => {
    const unknown = [...template.matchAll(/\{([^{}]*)\}/g)].map((m) => m[1]!).filter((name) => !(PLACEHOLDERS as readonly string[]).includes(name));
    if (unknown.length > 0) {
      ctx.addIssue({ code: 'custom', message: `${quote(template)} uses unknown placeholder ${unknown.map((u) => `{${u}}`).join(', ')}; the placeholders are ${PLACEHOLDER_LIST}` });
    } else if (/[{}]/.test(template.replace(/\{(db|schema|table|op)\}/g, ''))) {
      ctx.addIssue({ code: 'custom', message: `${quote(template)} has an unmatched brace; braces only surround the placeholders ${PLACEHOLDER_LIST}` });
    }
  });

const MESSAGE_PLACEHOLDERS = ['db', 'prefix'] as const;
const MESSAGE_PLACEHOLDER_LIST = MESSAGE_PLACEHOLDERS.map((p) => `{${p}}`).join(', ');

/** The routing key template of application events: literal text and `{db}`, `{prefix}`. */
export const messageRoutingKey = z
  .string()
  .min(1, { error: `an empty routing key template is not allowed; expected text and placeholders ${MESSAGE_PLACEHOLDER_LIST}` })
  .max(255, { error: (issue) => `${quote(issue.input)} is longer than the 255 characters AMQP allows for a routing key` })
  .superRefine((template, ctx) => {
    const unknown = [...template.matchAll(/\{([^{}]*)\}/g)].map((m) => m[1]!).filter((name) => !(MESSAGE_PLACEHOLDERS as readonly string[]).includes(name));
    if (unknown.length > 0) {
      ctx.addIssue({
        code: 'custom',
        message: `${quote(template)} uses unknown placeholder ${unknown.map((u) => `{${u}}`).join(', ')}; the placeholders are ${MESSAGE_PLACEHOLDER_LIST}`,
      });
    } else if (/[{}]/.test(template.replace(/\{(db|prefix)\}/g, ''))) {
      ctx.addIssue({ code: 'custom', message: `${quote(template)} has an unmatched brace; braces only surround the placeholders ${MESSAGE_PLACEHOLDER_LIST}` });
    }
  });

/** AMQP 0-9-1 exchange names: letters, digits, hyphen, underscore, period, colon; at most 255. */
export const exchangeName = z
  .string()
  .trim()
  .regex(/^[A-Za-z0-9_.:-]{1,255}$/, isNot('an exchange name (1 to 255 letters, digits, and - _ . :)'));

/** A Postgres URL; its parts are checked when the connection settings are assembled. */
export function postgresUrl(): Kind<string> {
  return {
    type: 'url',
    schema: z
      .string()
      .trim()
      .refine((s) => /^postgres(ql)?:\/\/\S*$/.test(s), isNot('a postgres:// or postgresql:// URL', true)),
  };
}

function isAmqpUrl(s: string): boolean {
  if (!/^amqps?:\/\//i.test(s)) return false;
  try {
    new URL(s);
    return true;
  } catch {
    return false;
  }
}

/** One or more comma-separated amqp:// or amqps:// URLs, tried in turn. */
export function amqpUrls(): Kind<string[]> {
  return {
    type: 'urls',
    schema: z
      .string()
      .transform(splitList)
      .pipe(
        z
          .array(z.string().refine(isAmqpUrl, isNot('an amqp:// or amqps:// URL', true)))
          .min(1, { error: 'an empty list is not allowed; expected one or more amqp:// or amqps:// URLs' }),
      ),
  };
}

/** A file path; the loader resolves it against the working directory and checks it can be read. */
export function path(): Kind<string> {
  return { type: 'path', schema: z.string().trim().min(1, { error: 'an empty path is not allowed; expected a file path' }) };
}

function range(what: string, min: number, max: number): string {
  if (max === Number.MAX_SAFE_INTEGER) return `${what} >= ${min}`;
  return `${what} from ${min} to ${max}`;
}
