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
 * Memory: open transactions are a list in stream order. Of a run of settled transactions behind
 * an unsettled one only the last end LSN matters (the safe LSN jumps to it once the prefix
 * settles), so a run is kept as its last entry: no two settled entries are ever adjacent and the
 * first entry is never settled, hence at most twice as many entries as unsettled transactions
 * (those with unconfirmed messages, plus the one being read) however many transactions that
 * publish nothing (other tables, with wal2json) stream past one held confirm.
 *
 * A nack or a lost connection is not modelled here: the session that owns the checkpoint ends,
 * and the next one starts from the slot's confirmed position with a new checkpoint.
 */

export interface TxEntry {
  readonly commitLsn: bigint;
  readonly endLsn: bigint | null;
  readonly outstanding: number;
}

/** An open transaction: a node of the list in stream order. */
class Entry implements TxEntry {
  endLsn: bigint | null = null;
  outstanding = 0;
  prev: Entry | null = null;
  next: Entry | null = null;
  constructor(readonly commitLsn: bigint) {}
  settled(): boolean {
    return this.endLsn !== null && this.outstanding === 0;
  }
}

export class Checkpoint {
  private first: Entry | null = null;
  private last: Entry | null = null;
  private entries = 0;
  private safe: bigint;
  private outstandingTotal = 0;

  /** `start`: the position already known safe (the slot's confirmed position, or 0). */
  constructor(start: bigint = 0n) {
    this.safe = start;
  }

  begin(commitLsn: bigint): TxEntry {
    const entry = new Entry(commitLsn);
    entry.prev = this.last;
    if (this.last) this.last.next = entry;
    else this.first = entry;
    this.last = entry;
    this.entries++;
    return entry;
  }

  published(tx: TxEntry, count = 1): void {
    const entry = tx as Entry;
    entry.outstanding += count;
    this.outstandingTotal += count;
  }

  confirmed(tx: TxEntry, count = 1): void {
    const entry = tx as Entry;
    if (entry.outstanding < count) throw new Error('checkpoint: more confirms than messages for a transaction');
    entry.outstanding -= count;
    this.outstandingTotal -= count;
    if (entry.settled()) this.settle(entry);
  }

  committed(tx: TxEntry, endLsn: bigint): void {
    const entry = tx as Entry;
    entry.endLsn = endLsn;
    if (entry.settled()) this.settle(entry);
  }

  /**
   * A keepalive said the server has sent everything up to `lsn`. Accept it only when no
   * transaction is open or unconfirmed; the caller vouches that nothing received is unhandled.
   */
  idle(lsn: bigint): boolean {
    if (this.entries > 0) return false;
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

  /**
   * Entries held for transactions not yet behind the safe LSN (runs of settled ones count once):
   * what the checkpoint's memory grows with, bounded by the pipeline.
   */
  openTransactions(): number {
    return this.entries;
  }

  /** `entry` just settled: move the safe LSN if it was first, else merge it with settled neighbours. */
  private settle(entry: Entry): void {
    if (entry === this.first) {
      // The entry after a settled one is unsettled (or absent), so this stops within two steps.
      let head: Entry | null = entry;
      while (head && head.settled()) {
        if (head.endLsn! > this.safe) this.safe = head.endLsn!;
        const next: Entry | null = head.next;
        this.unlink(head);
        head = next;
      }
      return;
    }
    // Later entries end later: a run is represented by its last entry.
    // (An entry that moves nothing, a snapshot chunk's, ends at 0: the run keeps the greatest end.)
    const prev = entry.prev;
    if (prev?.settled()) {
      if (prev.endLsn! > entry.endLsn!) entry.endLsn = prev.endLsn;
      this.unlink(prev);
    }
    const next = entry.next;
    if (next?.settled()) {
      if (entry.endLsn! > next.endLsn!) next.endLsn = entry.endLsn;
      this.unlink(entry);
    }
  }

  private unlink(entry: Entry): void {
    if (entry.prev) entry.prev.next = entry.next;
    else this.first = entry.next;
    if (entry.next) entry.next.prev = entry.prev;
    else this.last = entry.prev;
    // The pipeline may still hold the entry (confirm callbacks): let go of its neighbours.
    entry.prev = null;
    entry.next = null;
    this.entries--;
  }
}
