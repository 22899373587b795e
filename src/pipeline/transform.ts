/**
 * The transform hook (PGWARREN_TRANSFORM, README "Shaping the stream"): a user module exporting
 * `transform(event)`, called once per row event in the hot path.
 *
 * Outcomes of one call:
 * - an object: the event to publish in its place. Its `id` must be the event's own (ids, and
 *   with them redelivery and the checkpoint, are not the transform's to change). Two reserved
 *   fields are taken out of the body: `_routing_key` (a string of at most 255 bytes) replaces the
 *   routing key, `_headers` (an object of string, number or boolean values) adds AMQP headers,
 *   which may not replace the `pgwarren-*` ones.
 * - null: the event is dropped (counted as filtered, reason "transform").
 * - a throw, a rejection, a timeout, or anything else (undefined, an array, an id changed, a bad
 *   reserved field): a failure; the pipeline dead-letters the event with the reason (README "Failure handling")
 *   and goes on.
 * A synchronous transform cannot be interrupted: one that runs past the budget is only logged. A
 * promise is awaited at most the budget (PGWARREN_TRANSFORM_TIMEOUT), then it is a timeout.
 *
 * The event reaches the transform parsed without loss: a number a double cannot hold exactly
 * (only inside json/jsonb values; int8 and numeric are strings already) is a lossless-json
 * `LosslessNumber`, written back with the same digits.
 */
import { pathToFileURL } from 'node:url';
import { resolve } from 'node:path';
import { LosslessNumber, parse as parseLossless, stringify as stringifyLossless } from 'lossless-json';
import type { BuiltEvent } from '../events/envelope.js';
import { ROUTING_KEY_MAX_BYTES } from '../events/routing.js';

export type TransformFn = (event: Record<string, unknown>) => unknown;

export type TransformOutcome =
  | { readonly kind: 'event'; readonly event: BuiltEvent }
  | { readonly kind: 'drop' }
  | { readonly kind: 'fail'; readonly error: string };

/** Loads the module; a message for the operator when it cannot be used. */
export async function loadTransform(path: string, cwd = process.cwd()): Promise<TransformFn> {
  const file = resolve(cwd, path);
  let mod: { transform?: unknown; default?: { transform?: unknown } };
  try {
    mod = (await import(pathToFileURL(file).href)) as typeof mod;
  } catch (err) {
    throw new Error(`PGWARREN_TRANSFORM: cannot load ${JSON.stringify(file)}: ${(err as Error).message}`);
  }
  const fn = mod.transform ?? mod.default?.transform;
  if (typeof fn !== 'function') throw new Error(`PGWARREN_TRANSFORM: ${JSON.stringify(file)} does not export a function named transform`);
  return fn as TransformFn;
}

const HEADER_RESERVED = /^pgwarren-/i;

/** Numbers as `Number` when that keeps their text exactly, else as LosslessNumber. */
const parseNumber = (text: string): number | LosslessNumber => (String(Number(text)) === text ? Number(text) : new LosslessNumber(text));

function parseEvent(body: string): Record<string, unknown> {
  try {
    return parseLossless(body, null, parseNumber) as Record<string, unknown>;
  } catch {
    // lossless-json refuses duplicate keys, which a json column may hold: JSON.parse keeps the last.
    return JSON.parse(body) as Record<string, unknown>;
  }
}

const isPlainObject = (v: unknown): v is Record<string, unknown> =>
  typeof v === 'object' && v !== null && !Array.isArray(v) && (Object.getPrototypeOf(v) === Object.prototype || Object.getPrototypeOf(v) === null);

export class Transformer {
  private lastSlowWarning = 0;

  constructor(
    private readonly fn: TransformFn,
    private readonly timeoutMs: number,
    private readonly onSlow: (ms: number, id: string) => void = () => undefined,
  ) {}

  /** Runs the transform on one event; a promise only when the transform returned one. */
  apply(event: BuiltEvent): TransformOutcome | Promise<TransformOutcome> {
    let out: unknown;
    const started = performance.now();
    try {
      out = this.fn(parseEvent(event.body));
    } catch (err) {
      return fail(`transform threw: ${errorText(err)}`);
    }
    if (isThenable(out)) return this.awaitResult(out, event);
    const ms = performance.now() - started;
    if (ms > this.timeoutMs && Date.now() - this.lastSlowWarning > 10_000) {
      this.lastSlowWarning = Date.now();
      this.onSlow(ms, event.id);
    }
    return result(event, out);
  }

  private async awaitResult(out: PromiseLike<unknown>, event: BuiltEvent): Promise<TransformOutcome> {
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<TransformOutcome>((resolve) => {
      timer = setTimeout(() => resolve(fail(`transform did not settle within ${this.timeoutMs} ms (PGWARREN_TRANSFORM_TIMEOUT)`)), this.timeoutMs);
    });
    try {
      return await Promise.race([
        Promise.resolve(out).then(
          (value) => result(event, value),
          (err: unknown) => fail(`transform rejected: ${errorText(err)}`),
        ),
        timeout,
      ]);
    } finally {
      clearTimeout(timer);
    }
  }
}

function isThenable(v: unknown): v is PromiseLike<unknown> {
  return (typeof v === 'object' || typeof v === 'function') && v !== null && typeof (v as { then?: unknown }).then === 'function';
}

const fail = (error: string): TransformOutcome => ({ kind: 'fail', error });

function errorText(err: unknown): string {
  return err instanceof Error ? `${err.name}: ${err.message}` : String(err);
}

function result(event: BuiltEvent, out: unknown): TransformOutcome {
  if (out === null) return { kind: 'drop' };
  if (!isPlainObject(out)) {
    const what = out === undefined ? 'undefined' : Array.isArray(out) ? 'an array' : typeof out;
    return fail(`transform returned ${what}; expected the event (an object) or null to drop it`);
  }
  const { _routing_key: routingKey, _headers: headers, ...rest } = out;
  if (rest.id !== event.id) return fail(`transform changed the event id from ${JSON.stringify(event.id)} to ${JSON.stringify(rest.id)}; ids are not the transform's to change`);
  if (routingKey !== undefined && (typeof routingKey !== 'string' || Buffer.byteLength(routingKey, 'utf8') > ROUTING_KEY_MAX_BYTES)) {
    return fail(`transform set _routing_key to ${typeof routingKey === 'string' ? `a string of ${Buffer.byteLength(routingKey, 'utf8')} bytes` : typeof routingKey}; expected a string of at most 255 bytes`);
  }
  let extra: Record<string, string | number | boolean> | undefined;
  if (headers !== undefined) {
    if (!isPlainObject(headers)) return fail('transform set _headers to something that is not an object of header names to values');
    extra = {};
    for (const [name, value] of Object.entries(headers)) {
      if (HEADER_RESERVED.test(name)) return fail(`transform set header ${JSON.stringify(name)}: pgwarren-* headers are pgwarren's own`);
      if (typeof value !== 'string' && typeof value !== 'boolean' && !(typeof value === 'number' && Number.isFinite(value))) {
        return fail(`transform set header ${JSON.stringify(name)} to ${typeof value}; header values are strings, finite numbers or booleans`);
      }
      extra[name] = value;
    }
  }
  let body: string | undefined;
  try {
    body = stringifyLossless(rest);
  } catch (err) {
    return fail(`transform returned an event that is not JSON: ${errorText(err)}`);
  }
  if (body === undefined) return fail('transform returned an event that is not JSON');
  return {
    kind: 'event',
    event: { ...event, body, ...(routingKey !== undefined && { ownRoutingKey: routingKey }), ...(extra && { ownHeaders: extra }) },
  };
}
