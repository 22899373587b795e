/**
 * Application events (README "Beyond rows"): a transaction calls
 * `pg_logical_emit_message(true, 'pgwarren.event', '<json>')` and that JSON is published as an
 * `op: "message"` event, atomically with the transaction's row changes.
 *
 * The payload is checked here, never rewritten: it must be UTF-8 and one JSON value. What is
 * embedded in the event is the text as given, only with insignificant whitespace removed, so big
 * numbers, exotic escapes and key order survive byte for byte (JSON.parse is used only to check
 * the syntax and to read a top-level `routing_key` string, never to re-serialize).
 */
import { minifyJson } from './json.js';

/** The logical message prefix of application events. */
export const APP_EVENT_PREFIX = 'pgwarren.event';

export type AppEventPayload =
  | { readonly ok: true; readonly payload: string; readonly routingKey: string | null }
  | { readonly ok: false; readonly reason: string };

const utf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

/** Check an application event's content; say why when it cannot be published. */
export function readAppEvent(content: Buffer): AppEventPayload {
  let text: string;
  try {
    text = utf8.decode(content);
  } catch {
    return { ok: false, reason: 'application event payload is not valid UTF-8' };
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    return { ok: false, reason: `application event payload is not JSON: ${(err as Error).message}` };
  }
  const payload = minifyJson(text.trim());
  const routingKey =
    value !== null && typeof value === 'object' && !Array.isArray(value) && typeof (value as Record<string, unknown>).routing_key === 'string'
      ? ((value as Record<string, unknown>).routing_key as string)
      : null;
  return { ok: true, payload, routingKey };
}

/** The routing key template of application events without a `routing_key` ({db}, {prefix}). */
export function messageRoutingKey(template: string, fields: { readonly db: string; readonly prefix: string }): string {
  return template.replace(/\{(db|prefix)\}/g, (_, name: 'db' | 'prefix') => fields[name]);
}
