import type { OutgoingMessage } from './amqp-sink.js';

/**
 * What the pipeline needs from a sink. `confirm` is called exactly once per message: null when
 * the destination durably took it, an error when it did not (the session then ends).
 */
export interface Publisher {
  /**
   * Write `msg` now (copy what must outlive the call). Once it returns, the caller may replace
   * `msg.content` and `msg.properties` (keeping `properties.messageId`) to free them while the
   * confirm is pending, so a publisher must read nothing else of `msg` afterwards.
   */
  publish(msg: OutgoingMessage, confirm: (err: Error | null) => void): void;
  /** False while the sink must not be written to (drain pending, broker alarm, failed). */
  writable(): boolean;
  whenWritable(): Promise<void>;
  failureReason(): Error | null;
}
