/**
 * Event positions in the stream, and how pgwarren finds where a stream ends.
 *
 * A position is (commit LSN of the transaction, index of the stream message among those the sink
 * wrote for that transaction). Both are the same on every read of a transaction: the slot is
 * always re-read from a transaction boundary, and the pipeline produces a transaction's messages
 * in the same order every time. Positions therefore grow with commit order, and a message at or
 * before the stream's last stored position is already in the stream.
 */
export interface Position {
  readonly lsn: bigint;
  readonly index: number;
}

export const LSN_PROPERTY = 'pgwarren-lsn';
export const INDEX_PROPERTY = 'pgwarren-tx-index';
export const PUBLISHING_ID_PROPERTY = 'pgwarren-publishing-id';

export function atOrBefore(p: Position, last: Position): boolean {
  return p.lsn < last.lsn || (p.lsn === last.lsn && p.index <= last.index);
}

/** LSN text `X/Y` (as Postgres prints it) -> 64-bit number. */
export function lsnOf(text: string): bigint {
  const m = /^([0-9A-Fa-f]{1,8})\/([0-9A-Fa-f]{1,8})$/.exec(text);
  if (!m) throw new Error(`not an LSN: ${text}`);
  return (BigInt('0x' + m[1]) << 32n) | BigInt('0x' + m[2]);
}

/** The tail entry of a stream as pgwarren wrote it (from a message's application properties). */
export interface TailEntry {
  readonly publishingId: bigint;
  readonly position: Position;
}

export function tailEntryOf(props: Record<string, string | number> | undefined): TailEntry | null {
  if (!props) return null;
  const lsn = props[LSN_PROPERTY];
  const index = props[INDEX_PROPERTY];
  const pid = props[PUBLISHING_ID_PROPERTY];
  if (typeof lsn !== 'string' || typeof pid !== 'string' || !/^\d+$/.test(pid) || !/^\d+$/.test(String(index))) return null;
  return { publishingId: BigInt(pid), position: { lsn: lsnOf(lsn), index: Number(index) } };
}
