/**
 * A delivery (sink.ts) as an AMQP message (README "Events", README "Events" and "Dead letters"):
 * the body (one event, or a JSON array of a batch's events), its compression, the properties
 * and the `pgwarren-*` headers. The AMQP sink publishes what this builds; the stream and stdout
 * sinks take the same body and headers, so every sink writes the same bytes.
 *
 * The hot path allocates little per message: the headers object is shared by the messages of
 * one route in one transaction (the pipeline hands out one route and one transaction object
 * each, so identity is the cache key); nobody mutates a headers object once built.
 */
import type { Options } from 'amqplib';
import type { BodyEncoder } from '../compression.js';
import type { DeadLetterDelivery, Delivery, DeliveryRoute, EventDelivery, TxRef } from '../sink.js';

export interface OutgoingMessage {
  readonly exchange: string;
  readonly routingKey: string;
  readonly content: Buffer;
  readonly properties: Options.Publish;
}

export type Headers = Readonly<Record<string, string | number | boolean>>;

export class MessageBuilder {
  private lastTx: TxRef | null = null;
  private lastRoute: DeliveryRoute | null = null;
  private lastHeaders: Headers | null = null;

  /** `encoder`: body compression (PGWARREN_COMPRESSION) of event messages; absent: UTF-8 JSON. */
  constructor(private readonly encoder?: BodyEncoder) {}

  /** The `contentEncoding` of event messages, or undefined (no compression). */
  get contentEncoding(): string | undefined {
    return this.encoder?.contentEncoding;
  }

  build(d: Delivery): OutgoingMessage {
    return d.kind === 'events' ? this.events(d) : deadLetter(d);
  }

  /** The body as text: one event, or a JSON array of a batch. */
  static text(d: Delivery): string {
    return d.batch ? '[' + d.bodies.join(',') + ']' : d.bodies[0]!;
  }

  /** The body as written: compressed for events when configured. */
  content(d: Delivery): Buffer {
    const text = MessageBuilder.text(d);
    return d.kind === 'events' && this.encoder ? this.encoder.encode(text) : Buffer.from(text, 'utf8');
  }

  /** The headers of an event delivery (the stream sink writes them as application properties). */
  headers(d: EventDelivery): Headers {
    let headers = this.routeHeaders(d.tx, d.route);
    if (d.batch) headers = { ...headers, 'pgwarren-batch': d.ids.length };
    if (d.ownHeaders) headers = { ...d.ownHeaders, ...headers };
    return headers;
  }

  private events(d: EventDelivery): OutgoingMessage {
    const encoder = this.encoder;
    return {
      exchange: d.exchange,
      routingKey: d.routingKey,
      content: this.content(d),
      properties: {
        messageId: d.ids[0]!,
        contentType: 'application/json',
        ...(encoder?.contentEncoding !== undefined && { contentEncoding: encoder.contentEncoding }),
        persistent: true,
        timestamp: d.timestampSeconds,
        type: d.route.op,
        appId: 'pgwarren',
        mandatory: true,
        expiration: d.route.expiration,
        headers: this.headers(d),
      },
    };
  }

  /**
   * The headers every message of one route in one transaction carries. Events of no table
   * (application, commit) carry schema '' and table = the application event's prefix ('' for
   * commit events); snapshot reads, outside any transaction, no LSN or xid.
   */
  private routeHeaders(tx: TxRef | null, route: DeliveryRoute): Headers {
    if (this.lastHeaders && this.lastTx === tx && this.lastRoute === route) return this.lastHeaders;
    const headers: Headers = tx
      ? { 'pgwarren-schema': route.schema, 'pgwarren-table': route.table, 'pgwarren-op': route.op, 'pgwarren-lsn': tx.lsn, 'pgwarren-xid': tx.xid }
      : { 'pgwarren-schema': route.schema, 'pgwarren-table': route.table, 'pgwarren-op': route.op };
    this.lastTx = tx;
    this.lastRoute = route;
    this.lastHeaders = headers;
    return headers;
  }
}

/** A dead letter: the event's own properties and headers plus `pgwarren-error`; never compressed. */
function deadLetter(d: DeadLetterDelivery): OutgoingMessage {
  const headers: Record<string, string | number> = { 'pgwarren-schema': d.schema, 'pgwarren-table': d.table, 'pgwarren-op': d.op };
  if (d.tx) {
    headers['pgwarren-lsn'] = d.tx.lsn;
    headers['pgwarren-xid'] = d.tx.xid;
  }
  headers['pgwarren-error'] = d.error;
  if (d.batch) headers['pgwarren-batch'] = d.bodies.length;
  return {
    exchange: d.exchange,
    routingKey: d.routingKey,
    content: Buffer.from(MessageBuilder.text(d), 'utf8'),
    properties: {
      messageId: d.id,
      contentType: 'application/json',
      persistent: true,
      timestamp: d.timestampSeconds,
      type: d.op,
      appId: 'pgwarren',
      mandatory: true,
      headers,
    },
  };
}
