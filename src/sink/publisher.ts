import type { OutgoingMessage } from './amqp-sink.js';

/**
 * What the pipeline needs from a sink. `confirm` is called exactly once per message: null when
 * the destination durably took it, an error when it did not (the session then ends).
 */
export interface Publisher {
  publish(msg: OutgoingMessage, confirm: (err: Error | null) => void): void;
  /** False while the sink must not be written to (drain pending, broker alarm, failed). */
  writable(): boolean;
  whenWritable(): Promise<void>;
  failureReason(): Error | null;
}
