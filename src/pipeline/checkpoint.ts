/**
 * The checkpoint decides how far the slot may be acknowledged. It is pure bookkeeping:
 *
 * - Every transaction read from the slot is opened in stream (= commit) order.
 * - Every message published for it is counted as outstanding until the broker confirms it.
 * - A transaction is settled when its commit was read and none of its messages is outstanding.
 * - The safe LSN is the end LSN of the last transaction in the settled prefix: a settled
 *   transaction behind an unsettled one does not count, so confirms arriving out of order never
 *   move the slot past a change the broker has not taken.
 * - With nothing open at all, a keepalive's position may be taken as safe (an idle slot must not
 *   hold WAL), but only when the caller knows no data is waiting to be handled.
 *
 * A nack or a lost connection is not modelled here: the session that owns the checkpoint ends,
 * and the next one starts from the slot's confirmed position with a new checkpoint.
 */

export interface TxEntry {
  readonly commitLsn: bigint;
  endLsn: bigint | null;
  outstanding: number;
}

export class Checkpoint {
  private readonly open: TxEntry[] = [];
  private head = 0; // index of the oldest unsettled entry in `open`; compacted lazily
  private safe: bigint;
  private outstandingTotal = 0;

  /** `start`: the position already known safe (the slot's confirmed position, or 0). */
  constructor(start: bigint = 0n) {
    this.safe = start;
  }

  begin(commitLsn: bigint): TxEntry {
    const entry: TxEntry = { commitLsn, endLsn: null, outstanding: 0 };
    this.open.push(entry);
    return entry;
  }

  published(entry: TxEntry, count = 1): void {
    entry.outstanding += count;
    this.outstandingTotal += count;
  }

  confirmed(entry: TxEntry, count = 1): void {
    if (entry.outstanding < count) throw new Error('checkpoint: more confirms than messages for a transaction');
    entry.outstanding -= count;
    this.outstandingTotal -= count;
    if (entry.outstanding === 0 && entry.endLsn !== null) this.settle();
  }

  committed(entry: TxEntry, endLsn: bigint): void {
    entry.endLsn = endLsn;
    if (entry.outstanding === 0) this.settle();
  }

  /**
   * A keepalive said the server has sent everything up to `lsn`. Accept it only when no
   * transaction is open or unconfirmed; the caller vouches that nothing received is unhandled.
   */
  idle(lsn: bigint): boolean {
    if (this.open.length - this.head > 0) return false;
    if (lsn > this.safe) this.safe = lsn;
    return true;
  }

  /** Highest LSN that may be reported to Postgres as flushed. */
  safeLsn(): bigint {
    return this.safe;
  }

  /** Messages published and not yet confirmed, across all transactions. */
  outstanding(): number {
    return this.outstandingTotal;
  }

  /** Transactions read but not yet settled (including one still being read). */
  openTransactions(): number {
    return this.open.length - this.head;
  }

  private settle(): void {
    while (this.head < this.open.length) {
      const entry = this.open[this.head]!;
      if (entry.endLsn === null || entry.outstanding > 0) break;
      if (entry.endLsn > this.safe) this.safe = entry.endLsn;
      this.head++;
    }
    if (this.head > 1024 && this.head * 2 > this.open.length) {
      this.open.splice(0, this.head);
      this.head = 0;
    }
  }
}
