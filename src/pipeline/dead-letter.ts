/**
 * Dead letters (README "Failure handling", README "Dead letters"): an event that can never be published as
 * configured goes to `PGWARREN_DEAD_LETTER_EXCHANGE` instead, so that it never blocks the
 * changes after it. This module holds the pure parts: what a dead letter is, its routing key and
 * the stub that replaces a body too big to publish anywhere. The pipeline sends them
 * (`Pipeline.deadLetter`), as one message slot of their transaction (or of their snapshot chunk),
 * confirmed like any other message before the slot passes the transaction.
 */
import type { SourceInfo, TxInfo } from '../types.js';
import { ROUTING_KEY_MAX_BYTES } from '../events/routing.js';

/**
 * Why an event was dead-lettered; the label of `pgwarren_dead_lettered_total{reason}`.
 * - `routing_key`: the routing key expanded past 255 bytes;
 * - `size`: the body is larger than `PGWARREN_MAX_MESSAGE_BYTES`;
 * - `broker_rejected`: the broker closed the channel (406) over this very message;
 * - `malformed`: an application event whose payload is not valid JSON (README "Beyond rows");
 * - `transform`: `PGWARREN_TRANSFORM` threw or returned something that is not an event (§13).
 */
export type DeadLetterReason = 'routing_key' | 'size' | 'broker_rejected' | 'malformed' | 'transform';

/** One event that goes to the dead-letter exchange instead of its configured destination. */
export interface DeadLetter {
  /** The event id (`tx.lsn:seq`), as it would have been published: the message's `messageId`. */
  readonly id: string;
  /** For the routing key `schema.table.op` and the `pgwarren-schema/-table/-op` headers. */
  readonly schema: string;
  readonly table: string;
  readonly op: string;
  /**
   * A JSON text: the event as it would have been published, or, for one that could not even be
   * built, an envelope of what is known (e.g. the raw payload as a JSON string). Replaced by a
   * stub (`stubBody`) when it is larger than the max message size.
   */
  readonly body: string;
  readonly reason: DeadLetterReason;
  /** Why, for people: the `pgwarren-error` header and the log line. */
  readonly error: string;
}

/**
 * The routing key on the dead-letter exchange: `schema.table.op`. Postgres identifiers are at most
 * 63 bytes, so for a row change it is at most 136 bytes; anything longer (a caller's own names)
 * is cut at a character boundary to stay a valid routing key.
 */
export function deadLetterRoutingKey(schema: string, table: string, op: string): string {
  // An event of no table (an application event: schema '', table = its prefix) goes as `prefix.op`.
  return truncateUtf8(schema === '' ? `${table}.${op}` : `${schema}.${table}.${op}`, ROUTING_KEY_MAX_BYTES);
}

/** `text` cut to at most `max` UTF-8 bytes without splitting a character. */
export function truncateUtf8(text: string, max: number): string {
  if (text.length * 3 <= max || Buffer.byteLength(text, 'utf8') <= max) return text;
  let out = '';
  let bytes = 0;
  for (const ch of text) {
    const n = Buffer.byteLength(ch, 'utf8');
    if (bytes + n > max) break;
    out += ch;
    bytes += n;
  }
  return out;
}

/** Byte length of a UTF-8 text, skipping the count when its length alone proves it is small. */
export function utf8Bytes(text: string): number {
  return Buffer.byteLength(text, 'utf8');
}

/**
 * A small JSON envelope without row values for an event whose body cannot be published anywhere:
 * it names the event (id, op, table, transaction, source), the error and the size of the body it
 * replaces, so that a consumer can fetch the row itself.
 */
export function stubBody(letter: Pick<DeadLetter, 'id' | 'schema' | 'table' | 'op' | 'error'>, tx: TxInfo | null, lsn: string, source: SourceInfo, bytes: number): string {
  return JSON.stringify({
    id: letter.id,
    op: letter.op,
    schema: letter.schema,
    table: letter.table,
    // A snapshot read belongs to no transaction: `tx` null, as in the read event itself.
    tx: tx && { xid: tx.xid, lsn, commit_time: tx.commitTime },
    source,
    dead_letter: { error: letter.error, bytes, truncated: true },
  });
}
