/**
 * How a session abandons the step in progress when asked to stop: each connecting step is raced
 * against the stop signal (`Step`), and the loser's connection is closed by whoever owns it.
 */

/** Thrown when a stop abandons the step in progress; the session then ends 'stopped'. */
export class Stopped extends Error {
  constructor() {
    super('stopped');
  }
}

/** `work`, unless a stop comes first: then it rejects with Stopped. */
export type Step = <T>(work: Promise<T>) => Promise<T>;
