/**
 * The flood guard decides, per transaction and table, whether a table's changes are a flood and
 * what becomes of its events. Pure: it never publishes, it tells the pipeline what to publish.
 *
 * Why events are held: pgoutput and wal2json send a transaction only once it has committed, but
 * whether a table floods is known only when its count passes the threshold or a marker arrives,
 * which may be at the very end. So, unless the action is `pass`, a transaction's events are held
 * in stream order until commit, and a table's held events leave the buffer the moment it floods.
 *
 * The bound: at most `bufferEvents` events, and at most `bufferBytes` of their JSON bodies, are
 * held (wide rows or large TOAST values make the byte bound the one that counts). When a
 * transaction would need more (many
 * tables each below the threshold), the guard stops holding and only counts, through to the
 * commit. The pipeline then reads that transaction again from the slot (nothing of it was
 * published, and it is not acknowledged) with the counts known up front: a `TxPlan`. With a plan
 * nothing needs holding, so memory stays bounded whatever the transaction size.
 *
 * With `divert`, a table's rows leave for the flood exchange the moment it floods, so the first
 * read of a transaction that is then read again has already published some of them. The rule
 * that keeps each table's rows in commit order and each of them sent once: once counting, the
 * guard diverts nothing more (rows are only counted), so what the first read diverted of each
 * table is a prefix of its rows (the first `d`, possibly none); the plan records `d` and the
 * second read diverts only the rows after it. (The pipeline sends the first read's open batch
 * before asking for the second read, and the session keeps `d` only once the broker confirmed
 * all of it; see README "Flood guard".)
 *
 * Per transaction: holding -> (overflow) counting -> commit: replan | flush.
 *                  planned (second read)    -> commit: flush bulk events.
 */
import type { Op } from '../types.js';
import { tableKey, type TableKey } from '../shared/table-name.js';

export type FloodAction = 'summarize' | 'drop' | 'divert' | 'pass';
export type FloodReason = 'threshold' | 'marker';

export interface TableCounts {
  insert: number;
  update: number;
  delete: number;
  /** seq of the table's first change in the transaction */
  firstSeq: number;
}

export interface FloodedTable {
  readonly schema: string;
  readonly table: string;
  readonly counts: TableCounts;
  readonly reason: FloodReason;
}

/** What a second read of a transaction knows before it starts. */
export interface TxPlan {
  readonly commitLsn: bigint;
  /** Table (`tableKey`) -> why it floods; tables not listed do not. */
  readonly flooded: ReadonlyMap<TableKey, FloodReason>;
  /**
   * With `divert`: table (`tableKey`) -> how many of the table's first rows the first read diverted
   * (always a prefix: nothing is diverted once the guard counts). The second read diverts only
   * the rows after them. Valid only once the broker confirmed what the first read diverted.
   */
  readonly diverted?: ReadonlyMap<TableKey, number>;
}

/** Where an event goes now. */
export type Disposition = 'publish' | 'divert' | 'drop';

export interface FloodGuardOptions {
  readonly action: FloodAction;
  /** Threshold for a table; 0 disables counting for it (the marker still applies). */
  readonly thresholdFor: (schema: string, table: string) => number;
  readonly bufferEvents: number;
  /** Bound on the held events' body sizes (in UTF-16 code units, close to bytes); default none. */
  readonly bufferBytes?: number;
}

interface TableState {
  readonly schema: string;
  readonly table: string;
  readonly counts: TableCounts;
  flooded: FloodReason | null;
  /** How many of this table's rows this read diverted: its first ones (divert only). */
  diverted: number;
}

export class FloodGuard<E> {
  private tables = new Map<TableKey, TableState>();
  private held: Array<{ key: TableKey | null; event: E; size: number }> = [];
  private heldCount = 0;
  private heldBytes = 0;
  private marker = false;
  private counting = false;
  private plan: TxPlan | null = null;

  constructor(private readonly opts: FloodGuardOptions) {}

  /** Start a transaction; `plan` when this is a second read after an overflow. */
  begin(plan: TxPlan | null): void {
    this.tables = new Map();
    this.held = [];
    this.heldCount = 0;
    this.heldBytes = 0;
    this.marker = false;
    this.counting = false;
    this.plan = plan;
  }

  /** Whether events should be held at all (everything but `pass` needs to wait for the verdict). */
  private holds(): boolean {
    return this.opts.action !== 'pass' && this.plan === null;
  }

  /**
   * The transaction carried the marker: every table floods. Events already held leave now.
   * Returns the held events to divert (action `divert`), in order.
   */
  markMarker(): E[] {
    this.marker = true;
    const out: E[] = [];
    for (const state of this.tables.values()) {
      const total = state.counts.insert + state.counts.update + state.counts.delete;
      if (state.flooded === null && total > 0) out.push(...this.flood(state, 'marker'));
    }
    return out;
  }

  /**
   * A row change (not a truncate) of `schema.table` with its seq. Says what to do with its event
   * (`hold`: build it and pass it to `keep`), and returns held events that must be diverted now
   * because the table just flooded. Events for `drop` and `count` need not even be built.
   */
  row(schema: string, table: string, op: Exclude<Op, 'truncate'>, seq: number): { now: Disposition | 'hold' | 'count'; divert: E[] } {
    const key = tableKey(schema, table);
    let state = this.tables.get(key);
    if (!state) {
      state = { schema, table, counts: { insert: 0, update: 0, delete: 0, firstSeq: seq }, flooded: null, diverted: 0 };
      this.tables.set(key, state);
    }
    state.counts[op]++;
    let divert: E[] = [];
    const total = state.counts.insert + state.counts.update + state.counts.delete;
    if (state.flooded === null) {
      const planned = this.plan?.flooded.get(key);
      if (planned) state.flooded = planned;
      else if (this.marker) divert = this.flood(state, 'marker');
      else {
        const threshold = this.opts.thresholdFor(schema, table);
        if (threshold > 0 && total > threshold) divert = this.flood(state, 'threshold');
      }
    }
    if (state.flooded !== null) {
      // Counting: this read's verdicts are void; a diverted row here would overtake the rows
      // of its table the counting threw away (they are diverted by the second read).
      if (this.counting) return { now: 'count', divert };
      const now = this.floodDisposition();
      if (now === 'divert') {
        if (total <= (this.plan?.diverted?.get(key) ?? 0)) return { now: 'drop', divert }; // the first read sent it
        state.diverted++;
      }
      return { now, divert };
    }
    return { now: this.holdOrCount(), divert };
  }

  /**
   * Hold the event of a change `row` or `truncate` answered `hold` for. `table` is its table's
   * `tableKey` for a row change, null for a truncate (which must stay even if its table floods later).
   */
  keep(event: E, table: TableKey | null, size = 0): void {
    this.held.push({ key: table, event, size });
    this.heldCount++;
    this.heldBytes += size;
  }

  /** A truncate is never part of a flood, but keeps its place among held events. */
  truncate(): Disposition | 'hold' | 'count' {
    return this.holdOrCount();
  }

  /**
   * End of the transaction. Either the held events to publish in order plus the flooded tables
   * (for bulk events and logs), or — after an overflow — the plan for reading it again.
   */
  commit(commitLsn: bigint): { publish: E[]; flooded: FloodedTable[]; replan: TxPlan | null } {
    const flooded: FloodedTable[] = [];
    const plan = new Map<TableKey, FloodReason>();
    const diverted = new Map<TableKey, number>();
    for (const [key, s] of this.tables) {
      if (s.flooded) {
        flooded.push({ schema: s.schema, table: s.table, counts: s.counts, reason: s.flooded });
        plan.set(key, s.flooded);
        if (s.diverted > 0) diverted.set(key, s.diverted);
      }
    }
    flooded.sort((a, b) => a.counts.firstSeq - b.counts.firstSeq);
    if (this.counting) {
      const replan: TxPlan = { commitLsn, flooded: plan, ...(diverted.size > 0 ? { diverted } : {}) };
      this.begin(null);
      return { publish: [], flooded, replan };
    }
    const publish = this.held.map((h) => h.event);
    this.begin(null);
    return { publish, flooded, replan: null };
  }

  private holdOrCount(): 'publish' | 'hold' | 'count' {
    if (this.counting) return 'count';
    if (!this.holds()) return 'publish';
    if (this.heldCount >= this.opts.bufferEvents || this.heldBytes >= (this.opts.bufferBytes ?? Infinity)) {
      // Too much to hold: forget what is held (none of it was published) and only count.
      this.counting = true;
      this.held = [];
      this.heldCount = 0;
      this.heldBytes = 0;
      return 'count';
    }
    return 'hold';
  }

  /**
   * `state` floods now. With divert, its held rows leave with it: while holding, those are all
   * of its rows so far; while counting nothing is held (and nothing is diverted).
   */
  private flood(state: TableState, reason: FloodReason): E[] {
    state.flooded = reason;
    const key = tableKey(state.schema, state.table);
    const mine: E[] = [];
    const rest: Array<{ key: TableKey | null; event: E; size: number }> = [];
    let restBytes = 0;
    for (const h of this.held) {
      if (h.key === key) mine.push(h.event);
      else {
        rest.push(h);
        restBytes += h.size;
      }
    }
    if (mine.length > 0) {
      this.held = rest;
      this.heldCount = rest.length;
      this.heldBytes = restBytes;
    }
    if (this.opts.action !== 'divert') return [];
    state.diverted += mine.length;
    return mine;
  }

  private floodDisposition(): Disposition {
    switch (this.opts.action) {
      case 'pass':
        return 'publish';
      case 'divert':
        return 'divert';
      default:
        return 'drop';
    }
  }
}
