/**
 * PGWARREN_BROKER_HEARTBEAT: how quickly a silent broker is noticed (README "Failure handling").
 * One number drives the AMQP heartbeat, the stream client's heartbeat and the stream sink's
 * confirm stall bound, so an operator tunes the detection of a dead broker path in one place.
 */

/**
 * The stream client's heartbeat does not notice a silent peer, so the stream sink bounds the wait
 * for confirms itself: this many heartbeat intervals, a little longer than amqplib takes to give
 * up on a silent AMQP broker (two to three intervals), so a slow confirm is not mistaken for one.
 */
export const CONFIRM_STALL_HEARTBEATS = 3;

/** Milliseconds the stream sink waits with messages outstanding and no confirm before failing. */
export function confirmStallMs(heartbeatSeconds: number): number {
  return CONFIRM_STALL_HEARTBEATS * heartbeatSeconds * 1000;
}

/**
 * The AMQP URL with `heartbeat=<seconds>` added. Half-open TCP connections are only noticed
 * through heartbeats and amqplib's default is none; a heartbeat the URL already names is the
 * operator's explicit choice for that broker and wins.
 */
export function withHeartbeat(url: string, heartbeatSeconds: number): string {
  if (/[?&]heartbeat=/.test(url)) return url;
  return url + (url.includes('?') ? '&' : '?') + `heartbeat=${heartbeatSeconds}`;
}
