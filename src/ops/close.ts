/**
 * Closing a connection politely (pg's Terminate, AMQP's Connection.Close) waits for the peer. On
 * a network that silently stopped delivering, the peer never answers and the polite close never
 * ends, which would leave a dead session unable to finish and the daemon unable to reconnect.
 * So every close gets a grace period, after which the socket is destroyed.
 */
export const CLOSE_GRACE_MS = 3_000;

/** Something with a socket under it (pg's Connection, amqplib's Connection): `stream` is it. */
interface HasSocket {
  stream?: { destroy(): void } | null;
}

export async function closeWithin(close: () => Promise<unknown>, socketOwner: () => HasSocket | null | undefined, graceMs = CLOSE_GRACE_MS): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  const timedOut = new Promise<'timeout'>((resolve) => (timer = setTimeout(() => resolve('timeout'), graceMs)));
  const closed = close().then(
    () => 'closed' as const,
    () => 'closed' as const,
  );
  const outcome = await Promise.race([closed, timedOut]);
  clearTimeout(timer);
  if (outcome === 'timeout') socketOwner()?.stream?.destroy();
}

/** pg's Client keeps its socket in `connection.stream` (not in the type definitions). */
export function pgSocketOwner(client: unknown): HasSocket | undefined {
  return (client as { connection?: HasSocket } | null)?.connection;
}
