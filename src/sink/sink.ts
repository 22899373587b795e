import type { SinkError } from './amqp-sink.js';

export type SinkKind = 'amqp' | 'stream' | 'stdout';

/**
 * The transaction a delivery belongs to. The pipeline passes one object per read of a
 * transaction, so a sink may cache what it derives from it (headers) by identity.
 */
export interface TxRef {
  readonly commitLsn: bigint;
  /** The commit LSN as Postgres prints it (`X/Y`). */
  readonly lsn: string;
  readonly xid: number;
}

/**
 * Where the events of one table (or fixed routing key) and op go, as the router decided it
 * (events/router.ts, which hands out one object per route: sinks may cache by identity).
 */
export interface DeliveryRoute {
  /** '' for events of no table (application, commit); then `table` is a prefix or ''. */
  readonly schema: string;
  readonly table: string;
  readonly op: string;
  /** Per-message expiry in milliseconds, as text; undefined: none. */
  readonly expiration: string | undefined;
}

/**
 * One or more events of one transaction (or of one snapshot chunk: `tx` null) that travel as
 * one message, in the order the pipeline produced them. The pipeline decides what goes
 * together; how it looks on the wire (a JSON array, properties, headers, compression) is the
 * sink's business.
 */
export interface EventDelivery {
  readonly kind: 'events';
  /** Null for snapshot `read` events, which stand between transactions. */
  readonly tx: TxRef | null;
  /** Seconds since the epoch: the commit time of the transaction (the read time for reads). */
  readonly timestampSeconds: number;
  readonly route: DeliveryRoute;
  /** The destination decided by the pipeline: the route's exchange, or the flood exchange. */
  readonly exchange: string;
  readonly routingKey: string;
  /** Event ids, aligned with `bodies`; the first is the message's id. */
  readonly ids: readonly string[];
  /** Event JSON texts (UTF-8). */
  readonly bodies: readonly string[];
  /** Batched mode: the events travel as a JSON array with their count, even a single one. */
  readonly batch: boolean;
  /** Headers a transform gave the event (it then travels alone). */
  readonly ownHeaders?: Readonly<Record<string, string | number | boolean>>;
}

/**
 * An event (or, with `batch`, the stubs of a batch the broker refused) that goes to the
 * dead-letter exchange instead (README "Dead letters"): never compressed, no expiry.
 */
export interface DeadLetterDelivery {
  readonly kind: 'dead-letter';
  readonly tx: TxRef | null;
  readonly timestampSeconds: number;
  readonly exchange: string;
  readonly routingKey: string;
  /** The message id: the event's id. */
  readonly id: string;
  readonly schema: string;
  readonly table: string;
  readonly op: string;
  /** Why, for people: the `pgwarren-error` header. */
  readonly error: string;
  /** One body, or with `batch` the stubs of the batch's events. */
  readonly bodies: readonly string[];
  readonly batch: boolean;
}

export type Delivery = EventDelivery | DeadLetterDelivery;

/**
 * Confirm callback: `err` null when the destination took the message. `tag` is the number the
 * sink's `deliver` returned for it and `messageId` the delivery's first id (both absent when the
 * sink does not number messages).
 */
export type Confirm = (err: Error | null, tag?: number, messageId?: string) => void;

/**
 * What the pipeline needs from a sink. `confirm` is called exactly once per delivery: null when
 * the destination durably took it, an error when it did not (the session then ends).
 */
export interface DeliverySink {
  /**
   * Write `delivery` now; the sink keeps nothing of it but what its confirm needs.
   * Returns a number that grows by exactly one per delivery in order (the AMQP delivery tag), or
   * nothing: with it the pipeline knows which messages of a transaction the broker confirmed
   * (README: Delivery), without it a re-read resends a transaction whole.
   */
  deliver(delivery: Delivery, confirm: Confirm): number | void;
  /** False while the sink must not be written to (drain pending, broker alarm, failed). */
  writable(): boolean;
  whenWritable(): Promise<void>;
  failureReason(): Error | null;
}

/**
 * The one interface every sink implements (AMQP exchanges, a RabbitMQ stream, stdout): the
 * pipeline's `DeliverySink` plus what the session needs to supervise it. A sink never buffers or
 * republishes: whatever it has not confirmed is read again from the slot by the next session.
 */
export interface Sink extends DeliverySink {
  /** Resolves once, with the reason, when the sink stops working. Never rejects. */
  readonly failed: Promise<SinkError>;
  /** Where it publishes, for logs (passwords redacted). */
  readonly url: string;
  /** Index of the broker URL in use, for rotating through a cluster's URLs after a failure. */
  readonly urlIndex: number;
  close(): Promise<void>;
  /** Declare an exchange on the broker (snapshots aimed at an exchange of their own); AMQP only. */
  declareExchange?(ex: { name: string; type: string }): Promise<void>;
}
