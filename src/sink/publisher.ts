import type { OutgoingMessage } from './amqp-sink.js';

/**
 * Confirm callback: `err` null when the destination took the message. `tag` is the number the
 * publisher's `publish` returned for it and `messageId` its `properties.messageId` (both absent
 * when the publisher does not number messages).
 */
export type Confirm = (err: Error | null, tag?: number, messageId?: string) => void;

/**
 * What the pipeline needs from a sink. `confirm` is called exactly once per message: null when
 * the destination durably took it, an error when it did not (the session then ends).
 */
export interface Publisher {
  /**
   * Write `msg` now (copy what must outlive the call). Once it returns, the caller may replace
   * `msg.content` and `msg.properties` (keeping `properties.messageId`) to free them while the
   * confirm is pending, so a publisher must read nothing else of `msg` afterwards.
   * Returns a number that grows by exactly one per message in publish order (the AMQP delivery
   * tag), or nothing: with it the pipeline knows which messages of a transaction the broker
   * confirmed (README: Delivery), without it a re-read resends a transaction whole.
   */
  publish(msg: OutgoingMessage, confirm: Confirm): number | void;
  /** False while the sink must not be written to (drain pending, broker alarm, failed). */
  writable(): boolean;
  whenWritable(): Promise<void>;
  failureReason(): Error | null;
}
