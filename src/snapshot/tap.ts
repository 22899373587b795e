/**
 * The stream side of a snapshot chunk: the watermark window (the DBLog technique).
 *
 * For each chunk the reader (reader.ts) emits a low watermark into the WAL, SELECTs the chunk,
 * then emits a high watermark. Both are non-transactional logical messages with the prefix
 * `pgwarren.snapshot`: such a message is decoded at its own WAL position, between the transactions
 * committed before it and those committed after, so it marks a point in the stream's commit order
 * without waiting for (or being held up by) any transaction. A transactional message would appear
 * only at its own transaction's commit, which adds a commit per watermark and nothing else.
 *
 * Several chunks of one table may be open at once (the reader reads ahead of the stream). Their
 * windows follow each other in the WAL, since each low watermark is written after the previous
 * chunk's high one; each chunk is judged in its own window. State of each chunk:
 *   waiting-low -> (low watermark read from the stream) open -> (high watermark) published
 *   open: every change of the table the stream delivers removes its keys (old and new) from the
 *         chunk; a truncate removes every row
 *   (high watermark) draining: the rows left are handed to the pipeline as `read` events a slice
 *         at a time (`nextReads`), between the streamed transactions that follow the high
 *         watermark, so a streamed change never waits behind a whole chunk. Until a row is handed
 *         on, changes keep removing its key exactly as in the window: a row is published either
 *         before every later change of its key (its state is the one at the high watermark, so
 *         those changes are newer) or not at all (a change of its key, delivered first, carries a
 *         newer state). Handing a row on at the high watermark is the special case of a slice
 *         that holds the whole chunk.
 *   -> done once every slice was confirmed by the broker (or failed)
 *
 * Why that is consistent: the SELECT runs after the low watermark was written, so it sees every
 * transaction committed before the low watermark, and any transaction it sees that committed after
 * the low watermark is in the window. A row whose key the window did not touch therefore has the
 * same value in the SELECT as at the high watermark. A row the window touched is dropped: its
 * change event (delivered in the window) carries a state at least as new.
 *
 * One gap in that argument, closed here: a transaction can write its commit record before the low
 * watermark and still be invisible to the SELECT's snapshot (between its commit record and the
 * moment it leaves the process array; with synchronous replication, for as long as the standby
 * takes). The reader reports the transactions in progress in its snapshot (`xip`); if the stream
 * delivered one of them before the low watermark, the chunk is read again (outcome 'redo').
 * A change whose key cannot be worked out (a TOASTed key column not sent) also makes it redo.
 */
import { randomBytes } from 'node:crypto';
import { UNCHANGED_TOAST, type Change, type LogicalMessage, type RawTuple, type RelationInfo } from '../types.js';
import type { BuiltEvent } from '../events/envelope.js';
import type { RoutingKeyFn } from '../events/routing.js';

export const WATERMARK_PREFIX = 'pgwarren.snapshot';

/** What the reader SELECTed for a chunk. */
export interface ChunkRead {
  /** The chunk's rows in key order, values as Postgres' text, aligned with the chunk's relation. */
  readonly rows: readonly RawTuple[];
  /** 32-bit xids of the transactions in progress in the SELECT's snapshot. */
  readonly xip: ReadonlySet<number>;
}

/** Read events of a slice of a chunk, for the pipeline to publish (Pipeline.publishReads). */
export interface ReadBatch {
  readonly schema: string;
  readonly table: string;
  /** Overrides of the table's route for this snapshot; undefined = the table's own. */
  readonly exchange: string | undefined;
  readonly routingKey: RoutingKeyFn | undefined;
  readonly events: readonly BuiltEvent[];
  /** Called once: null when the broker confirmed every event, else the failure. */
  readonly onConfirmed: (err: Error | null) => void;
}

/** What a chunk published, once the broker confirmed all of it. */
export interface ChunkDelivery {
  /** Read events published. */
  readonly count: number;
  /** Whether the chunk's final event (the `end` of `toEvent`) was among them. */
  readonly endSent: boolean;
}

/**
 * 'published': the high watermark was reached and the chunk's rows are being handed to the
 * pipeline; `confirmed` settles when the broker confirmed every one of them (the reader records
 * progress only then, while it already reads the next chunk). 'redo': nothing was published;
 * read the chunk again.
 */
export type ChunkOutcome =
  | { readonly kind: 'published'; readonly confirmed: Promise<ChunkDelivery> }
  | { readonly kind: 'redo'; readonly reason: string };

export interface ChunkSpec {
  readonly relation: RelationInfo;
  /** Column-name lists that identify a row: the key, and the replica identity index when it differs. */
  readonly identities: readonly (readonly string[])[];
  readonly exchange: string | undefined;
  readonly routingKey: RoutingKeyFn | undefined;
  /**
   * Builds the event of a row left at the high watermark: `index` is its place in the chunk's
   * read (unique within the chunk), `end` is true on the chunk's final published event.
   */
  readonly toEvent: (row: RawTuple, index: number, end: boolean) => BuiltEvent;
}

export interface PendingChunk {
  readonly nonce: string;
  readonly low: string;
  readonly high: string;
  /** What the SELECT returned, before the high watermark is emitted. */
  setRead(read: ChunkRead): void;
  /** Settles once the high watermark was handled (from then on the chunk's rows are handed on). */
  readonly done: Promise<ChunkOutcome>;
}

interface Active {
  readonly spec: ChunkSpec;
  readonly name: string;
  readonly nonce: string;
  state: 'waiting-low' | 'open';
  removed: Set<string>;
  truncated: boolean;
  taint: string | null;
  beforeLow: Set<number> | null;
  read: ChunkRead | null;
  resolve(outcome: ChunkOutcome): void;
  reject(err: Error): void;
}

/** A chunk past its high watermark whose rows are handed to the pipeline a slice at a time. */
interface Draining {
  readonly chunk: Active;
  readonly rows: readonly RawTuple[];
  /** Index of the next row of `rows` to consider. */
  next: number;
  count: number;
  endSent: boolean;
  /** Slices handed on and not yet confirmed. */
  unconfirmed: number;
  settled: boolean;
  settle(err: Error | null): void;
}

const RECENT_XIDS = 4096;

export interface TapOptions {
  /** Read events handed on at once, between two streamed transactions. */
  readonly sliceEvents?: number;
  /** Read events handed on and not yet confirmed, beyond which no slice is handed on. */
  readonly maxUnconfirmed?: number;
}

/**
 * Chosen by measurement (README "Benchmarks", snapshots): a slice is published in a few
 * milliseconds, so a streamed transaction waits at most that long in the daemon behind read
 * events; the stream's messages also wait in the broker behind unconfirmed reads, so few are let
 * out (2,000 instead of 400 tripled the streamed changes' added delay; 400 bounds the snapshot to
 * about 400 rows per confirm round trip).
 */
const SLICE_EVENTS = 100;
const MAX_UNCONFIRMED = 400;

export class SnapshotTap {
  /** Chunks whose high watermark the stream has not reached, in the order they were emitted. */
  private chunks: Active[] = [];
  /** Chunks past their high watermark with rows still to hand on, in stream order. */
  private draining: Draining[] = [];
  /** Chunks handed on completely, waiting for the broker's confirms. */
  private confirming = new Set<Draining>();
  /**
   * A chunk had to be read again and the reader has not yet started over (`restart`): chunks it
   * begins meanwhile start after the range to be read again, so they are read again as well.
   */
  private redoPending = false;
  /**
   * xids of the last RECENT_XIDS transactions that changed an included table, whatever the
   * table and whether or not a snapshot runs: a transaction the stream delivered just before a
   * chunk began may be the one its SELECT could not see yet. A ring; each transaction once (its
   * changes arrive together).
   */
  private readonly recent = new Array<number>(RECENT_XIDS).fill(-1);
  private recentAt = 0;
  private lastXid = -1;
  private readonly session = randomBytes(4).toString('hex');
  private counter = 0;
  /** Column indexes of name lists, per relation object the stream or the reader uses. */
  private readonly indexCache = new WeakMap<RelationInfo, Map<string, number[] | null>>();
  private readonly sliceEvents: number;
  private readonly maxUnconfirmed: number;
  /** Read events handed on, not yet confirmed. */
  private unconfirmedEvents = 0;
  /** The pipeline's "reads may be handed on now" (set by `onReads`). */
  private readable: () => void = () => undefined;

  constructor(opts: TapOptions = {}) {
    this.sliceEvents = Math.max(1, opts.sliceEvents ?? SLICE_EVENTS);
    this.maxUnconfirmed = Math.max(this.sliceEvents, opts.maxUnconfirmed ?? MAX_UNCONFIRMED);
  }

  /** The pipeline's wake-up: called when reads wait to be handed on (`nextReads`). */
  onReads(fn: () => void): void {
    this.readable = fn;
  }

  /**
   * Open a chunk; the reader then emits `low`, SELECTs, calls `setRead`, emits `high`. Several
   * chunks of one table may be open at once (the reader reads ahead while the stream catches
   * up): their windows follow each other in the WAL, and each is judged on its own.
   */
  begin(spec: ChunkSpec): PendingChunk {
    const nonce = `${this.session}-${++this.counter}`;
    const name = `${spec.relation.schema}.${spec.relation.table}`;
    let resolve!: (o: ChunkOutcome) => void;
    let reject!: (e: Error) => void;
    const done = new Promise<ChunkOutcome>((res, rej) => {
      resolve = res;
      reject = rej;
    });
    const c: Active = {
      spec,
      name,
      nonce,
      state: 'waiting-low',
      removed: new Set(),
      truncated: false,
      taint: null,
      beforeLow: null,
      read: null,
      resolve: (o) => {
        this.chunks = this.chunks.filter((x) => x !== c);
        resolve(o);
      },
      reject: (e) => {
        this.chunks = this.chunks.filter((x) => x !== c);
        reject(e);
      },
    };
    if (this.redoPending) c.resolve({ kind: 'redo', reason: 'an earlier chunk is read again' });
    else this.chunks.push(c);
    return { nonce, low: `low ${nonce}`, high: `high ${nonce}`, done, setRead: (read) => (c.read = read) };
  }

  /** The reader gave up on its open chunks (a query failed, the session ends). */
  abort(err: Error): void {
    this.redoPending = false;
    for (const c of [...this.chunks]) c.reject(err);
    // Their progress is not recorded: the next session reads them again.
    for (const d of [...this.draining, ...this.confirming]) d.settle(err);
    this.draining = [];
    this.confirming.clear();
  }

  /** The reader starts over at the chunk that was read again. */
  restart(): void {
    this.redoPending = false;
  }

  /** `c` must be read again: so must every chunk after it, whose range starts where it ends. */
  private redo(c: Active, reason: string): void {
    this.redoPending = true;
    const later = this.chunks.slice(this.chunks.indexOf(c) + 1);
    c.resolve({ kind: 'redo', reason });
    for (const x of later) x.resolve({ kind: 'redo', reason: `an earlier chunk is read again (${reason})` });
  }

  isWatermark(msg: LogicalMessage): boolean {
    return !msg.transactional && msg.prefix === WATERMARK_PREFIX;
  }

  /**
   * A watermark read from the stream. Unknown ones (a previous session's, read again after a
   * restart) are ignored. At the high watermark the chunk's rows start to be handed on
   * (`nextReads`).
   */
  watermark(msg: LogicalMessage): void {
    const text = msg.content.toString('utf8');
    const space = text.indexOf(' ');
    const kind = text.slice(0, space);
    const c = this.chunks.find((x) => x.nonce === text.slice(space + 1));
    if (!c) return;
    if (kind === 'low') {
      c.state = 'open';
      c.beforeLow = new Set(this.recent);
      return;
    }
    if (kind !== 'high') return;
    // Chunks before it whose high watermark never came (cannot happen in one stream): read again.
    const head = this.chunks[0]!;
    if (head !== c) return this.redo(head, 'a high watermark was missed');
    if (c.state !== 'open') return this.redo(c, 'the high watermark arrived before the low one');
    const read = c.read;
    if (!read) return this.redo(c, 'the chunk was not read before its high watermark');
    if (c.taint) return this.redo(c, c.taint);
    for (const xid of read.xip) {
      if (c.beforeLow!.has(xid)) return this.redo(c, `transaction ${xid} committed before the low watermark but was not yet visible to the chunk's read`);
    }
    let settle!: (err: Error | null) => void;
    const d: Draining = {
      chunk: c,
      rows: c.truncated ? [] : read.rows,
      next: 0,
      count: 0,
      endSent: false,
      unconfirmed: 0,
      settled: false,
      settle: (err) => {
        if (d.settled) return;
        d.settled = true;
        this.confirming.delete(d);
        settle(err);
      },
    };
    const confirmed = new Promise<ChunkDelivery>((resolve, reject) => (settle = (err) => (err ? reject(err) : resolve({ count: d.count, endSent: d.endSent }))));
    confirmed.catch(() => undefined); // the reader awaits it; a session ending first must not leave it unhandled
    this.draining.push(d);
    c.resolve({ kind: 'published', confirmed });
    this.readable();
  }

  /** True while a chunk past its high watermark has rows to hand on and the broker keeps up. */
  hasReads(): boolean {
    return this.draining.length > 0 && this.unconfirmedEvents + this.sliceEvents <= this.maxUnconfirmed;
  }

  /**
   * The next slice of read events (at most `max`), in key order of the oldest chunk past its high
   * watermark; null when none is waiting. The pipeline calls it between streamed transactions
   * and publishes the slice before it handles the next one, so the changes it handled before
   * are exactly those that removed keys from the slice.
   */
  nextReads(): ReadBatch | null {
    const max = this.sliceEvents;
    while (this.hasReads()) {
      const d = this.draining[0]!;
      const c = d.chunk;
      if (c.taint) {
        // A change whose key cannot be worked out may have touched any row left: the rest of
        // the chunk cannot be published safely. Its progress is not recorded, so the reader
        // (after this failure) reads it again from the last confirmed chunk.
        this.draining.shift();
        d.settle(new Error(`snapshot chunk to be read again: ${c.taint}`));
        continue;
      }
      const picked: number[] = [];
      while (d.next < d.rows.length && picked.length < max) {
        const i = d.next++;
        if (!c.truncated && !this.touched(c, d.rows[i]!)) picked.push(i);
      }
      // Rows already touched never come back: skipping them now tells whether this slice ends the chunk.
      while (d.next < d.rows.length && (c.truncated || this.touched(c, d.rows[d.next]!))) d.next++;
      const ends = d.next >= d.rows.length;
      if (ends) {
        this.draining.shift();
        this.confirming.add(d);
      }
      if (picked.length === 0) {
        if (ends && d.unconfirmed === 0) d.settle(null);
        continue;
      }
      const events = picked.map((i, n) => c.spec.toEvent(d.rows[i]!, i, ends && n === picked.length - 1));
      d.count += events.length;
      if (ends) d.endSent = true;
      d.unconfirmed++;
      this.unconfirmedEvents += events.length;
      let settled = false;
      return {
        schema: c.spec.relation.schema,
        table: c.spec.relation.table,
        exchange: c.spec.exchange,
        routingKey: c.spec.routingKey,
        events,
        onConfirmed: (err) => {
          if (settled) return;
          settled = true;
          this.unconfirmedEvents -= events.length;
          if (err) return d.settle(err);
          d.unconfirmed--;
          if (d.unconfirmed === 0 && d.next >= d.rows.length && !this.draining.includes(d)) d.settle(null);
          if (this.hasReads()) this.readable();
        },
      };
    }
    return null;
  }

  /** A row change (or truncate) of an included table, as the stream delivers it, in transaction `xid`. */
  changed(change: Change, xid: number): void {
    const rel = change.relation;
    if (xid !== this.lastXid) {
      this.lastXid = xid;
      this.recent[this.recentAt] = xid;
      this.recentAt = (this.recentAt + 1) % RECENT_XIDS;
    }
    for (const c of this.chunks) {
      if (c.state === 'open' && c.spec.relation.table === rel.table && c.spec.relation.schema === rel.schema) this.remove(c, change);
    }
    for (const d of this.draining) {
      const c = d.chunk;
      if (c.spec.relation.table === rel.table && c.spec.relation.schema === rel.schema) this.remove(c, change);
    }
  }

  private remove(c: Active, change: Change): void {
    const rel = change.relation;
    if (change.kind === 'truncate') {
      c.truncated = true;
      return;
    }
    for (const tuple of [change.old, change.new]) {
      if (!tuple) continue;
      let known = false;
      for (let m = 0; m < c.spec.identities.length; m++) {
        const text = this.keyText(rel, c.spec.identities[m]!, tuple);
        if (text === null) continue;
        c.removed.add(`${m}\u0000${text}`);
        known = true;
      }
      if (!known && !(tuple === change.old && change.op === 'update')) {
        c.taint = `a change of ${c.name} carried no complete key`;
      }
    }
    // An update that sent no old tuple kept its key: the new tuple's key is the row's.
  }

  private touched(c: Active, row: RawTuple): boolean {
    if (c.removed.size === 0) return false;
    for (let m = 0; m < c.spec.identities.length; m++) {
      const text = this.keyText(c.spec.relation, c.spec.identities[m]!, row);
      if (text !== null && c.removed.has(`${m}\u0000${text}`)) return true;
    }
    return false;
  }

  /** The identity's values in `tuple` as one string, or null when one is not there. */
  private keyText(rel: RelationInfo, columns: readonly string[], tuple: RawTuple): string | null {
    const idx = this.indexes(rel, columns);
    if (!idx) return null;
    let out = '';
    for (const i of idx) {
      const v = tuple[i];
      if (v === undefined || v === UNCHANGED_TOAST) return null;
      out += v === null ? '\u0001' : `${v.length}:${v}`;
    }
    return out;
  }

  private indexes(rel: RelationInfo, columns: readonly string[]): number[] | null {
    let byList = this.indexCache.get(rel);
    if (!byList) this.indexCache.set(rel, (byList = new Map()));
    const key = columns.join('\u0000');
    let idx = byList.get(key);
    if (idx === undefined) {
      const found = columns.map((n) => rel.columns.findIndex((c) => c.name === n));
      idx = found.every((i) => i >= 0) ? found : null;
      byList.set(key, idx);
    }
    return idx;
  }
}
