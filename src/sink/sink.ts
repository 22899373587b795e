import type { Publisher } from './publisher.js';
import type { SinkError } from './amqp-sink.js';

export type SinkKind = 'amqp' | 'stream' | 'stdout';

/**
 * The one interface every sink implements (AMQP exchanges, a RabbitMQ stream, stdout): the
 * pipeline's `Publisher` plus what the session needs to supervise it. A sink never buffers or
 * republishes: whatever it has not confirmed is read again from the slot by the next session.
 *
 * What a stream needs beyond an AMQP message travels in the message itself, so the pipeline
 * stays sink-blind: the event position is the transaction's commit LSN (header `pgwarren-lsn`)
 * plus the order of the messages the pipeline sends for that transaction (the same on every
 * read of it), and the partition key is the event's `key` in the body.
 */
export interface Sink extends Publisher {
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
