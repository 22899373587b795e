/**
 * What the supervisor remembers across sessions about messages the broker refused (README:
 * Delivery, "When the broker refuses a message"). Sessions are otherwise stateless: a new one
 * reads the slot again from its confirmed position. Three facts outlive a session here, all keyed
 * by transaction and forgotten once the slot has been acknowledged past that transaction:
 *
 * - **Confirmed prefixes.** For a transaction read under a given flood plan, how many of its
 *   leading message slots the broker confirmed, and the message id of the last of them. A re-read
 *   under the *same* plan produces the same messages in the same order (batch boundaries too), so
 *   it skips those slots instead of sending them again: a transaction larger than a queue that
 *   rejects publishes completes piece by piece instead of being republished from its start
 *   forever. A re-read under another plan (a flood replan changes what is published) ignores it.
 * - **Careful mode.** After a nack, or a channel the broker closed (406) over a publish, the
 *   transactions up to the last one that had messages on the wire are published one message at a
 *   time: no message can then be accepted while an earlier one is refused, so no first delivery
 *   overtakes another again, and a message the broker closes the channel over is identified.
 * - **Rejected messages.** A message the broker closed the channel over (406, e.g. a body above
 *   its max_message_size) while it was the only unconfirmed one: 1 rejection -> the next read
 *   dead-letters a stub of it; 2 (the stub was refused too) -> the next read logs, counts and
 *   skips it. So such a message costs at most a few sessions, never the stream.
 */

/** The confirmed leading slots of one transaction, under one plan. */
export interface Prefix {
  /** Slots 0 .. count-1 were confirmed by the broker. */
  readonly count: number;
  /** `messageId` of slot count-1: a re-read checks it before relying on the rest. */
  readonly lastId: string;
  /** The flood plan the transaction was read under (compared by identity); null: none. */
  readonly plan: object | null;
}

export interface Rejection {
  readonly commitLsn: bigint;
  /** How many sessions the broker closed the channel over this message (or its stub). */
  readonly times: number;
  readonly error: string;
}

const MAX_PREFIXES = 256;
const MAX_REJECTIONS = 1024;

export class DeliveryMemory {
  private readonly prefixes = new Map<bigint, Prefix>();
  private readonly rejections = new Map<string, Rejection>();
  private carefulUntil: bigint | null = null;

  /** The prefix to skip when reading `commitLsn` under `plan`, if one was recorded for it. */
  prefix(commitLsn: bigint, plan: object | null): Prefix | null {
    const p = this.prefixes.get(commitLsn);
    return p && p.plan === plan ? p : null;
  }

  /** Remember (or extend) what the broker confirmed of a transaction read under `plan`. */
  recordPrefix(commitLsn: bigint, plan: object | null, count: number, lastId: string): void {
    if (count <= 0) return;
    const old = this.prefixes.get(commitLsn);
    if (old && old.plan === plan && old.count >= count) return;
    this.prefixes.delete(commitLsn); // re-insert: the map's order is age, oldest first
    this.prefixes.set(commitLsn, { count, lastId, plan });
    while (this.prefixes.size > MAX_PREFIXES) this.prefixes.delete(this.prefixes.keys().next().value!);
  }

  forgetPrefix(commitLsn: bigint): void {
    this.prefixes.delete(commitLsn);
  }

  /** Publish `commitLsn`'s messages one at a time? */
  careful(commitLsn: bigint): boolean {
    return this.carefulUntil !== null && commitLsn <= this.carefulUntil;
  }

  /** Publish every transaction up to `commitLsn` one message at a time. */
  beCareful(commitLsn: bigint): void {
    if (this.carefulUntil === null || commitLsn > this.carefulUntil) this.carefulUntil = commitLsn;
  }

  /** True once any message was rejected: lets the hot path skip the lookup otherwise. */
  anyRejected(): boolean {
    return this.rejections.size > 0;
  }

  rejection(messageId: string): Rejection | undefined {
    return this.rejections.get(messageId);
  }

  /** The broker closed the channel over `messageId` (of the transaction at `commitLsn`) once more. */
  recordRejection(messageId: string, commitLsn: bigint, error: string): Rejection {
    const r: Rejection = { commitLsn, times: (this.rejections.get(messageId)?.times ?? 0) + 1, error };
    this.rejections.set(messageId, r);
    while (this.rejections.size > MAX_REJECTIONS) this.rejections.delete(this.rejections.keys().next().value!);
    return r;
  }

  /**
   * The slot was acknowledged up to `lsn` (the end of the last settled transaction): every
   * transaction whose commit is before it is never read again, so forget what concerned it.
   */
  passed(lsn: bigint): void {
    for (const k of this.prefixes.keys()) if (k < lsn) this.prefixes.delete(k);
    for (const [id, r] of this.rejections) if (r.commitLsn < lsn) this.rejections.delete(id);
    if (this.carefulUntil !== null && this.carefulUntil < lsn) this.carefulUntil = null;
  }
}
