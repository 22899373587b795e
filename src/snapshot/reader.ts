/**
 * The snapshot runner of one session: takes the oldest unfinished snapshot of this slot from
 * `pgwarren.snapshots`, reads its tables chunk by chunk in key order, and records progress after
 * each chunk the broker confirmed. It lives and dies with the session (so only the instance that
 * holds the slot runs snapshots); the next session resumes from the recorded cursor.
 *
 * States: idle (polling for work) -> chunk (low watermark, SELECT, high watermark, wait for the
 * stream to publish and the broker to confirm) -> record -> chunk ... -> idle; stopped.
 *
 * Each chunk is its own short READ ONLY transaction: nothing is held open between chunks, so the
 * slot keeps advancing and vacuum is not held back, whatever the table size. Keyset pagination
 * compares and orders in SQL (`(a, b) > ($1, $2) ORDER BY a, b`), so composite, enum, uuid and
 * text keys follow Postgres' own ordering and collations; the cursor is kept as the key's text and
 * cast back to each column's type.
 */
import pg from 'pg';
import type { Logger } from '../ops/logger.js';
import type { EventBuilder } from '../events/envelope.js';
import type { TypeCatalog } from '../source/type-catalog.js';
import { REPLICA_IDENTITY, RelationCatalog, keyColumnsOf } from '../source/relation-catalog.js';
import { REPLICATION_SESSION_OPTIONS } from '../source/replication-stream.js';
import { quoteIdent } from '../source/decoder.js';
import { connectPg, destroyClient, within, type PgTimeouts, type QueryFn } from '../shared/pg-query.js';
import { compileRoutingKey } from '../events/routing.js';
import { sqlState } from '../errors.js';
import { closeWithin, pgSocketOwner } from '../ops/close.js';
import type { RawTuple, RelationInfo } from '../types.js';
import { WATERMARK_PREFIX, type ChunkDelivery, type ChunkOutcome, type SnapshotTap } from './tap.js';
import { finishSnapshot, markRunning, nextSnapshot, recordChunk, setUpper, type SnapshotRow } from './store.js';
import { splitName } from './tables.js';
import type { SnapshotMetrics } from './metrics.js';

/** How long stop() waits for the loop after failing its connections. */
const STOP_WAIT_MS = 1_000;

export interface RunnerOptions {
  readonly pg: pg.ClientConfig;
  readonly slot: string;
  readonly tap: SnapshotTap;
  readonly builder: EventBuilder;
  readonly types: TypeCatalog;
  /** Declares an exchange a snapshot is aimed at (undefined: the sink cannot). */
  readonly declareExchange?: (name: string) => Promise<void>;
  readonly metrics: SnapshotMetrics;
  readonly log: Logger;
  /** How often to look for new snapshot requests while idle. */
  readonly pollMs?: number;
  /**
   * PGWARREN_CONNECT_TIMEOUT and PGWARREN_QUERY_TIMEOUT, as for every connection (README "Failure handling"):
   * each chunk's statements are bounded by the query timeout, in the database too.
   */
  readonly timeouts: PgTimeouts;
  /** The table's row filter (a rule's `where`), so a snapshot publishes only rows the stream would. */
  readonly rowFilter?: (schema: string, table: string) => string | null;
  /** Set when the configured sink cannot carry snapshots: every request fails with this reason. */
  readonly unsupported?: string;
}

/** A table as the runner reads it. */
interface TablePlan {
  readonly relation: RelationInfo;
  readonly identities: string[][];
  readonly keyColumns: readonly string[];
  /** Index of each key column in `relation.columns`. */
  readonly keyIndexes: readonly number[];
  /** SQL type of each key column, for casting the cursor back. */
  readonly keyTypes: readonly string[];
  readonly from: string;
}

/** What every chunk of one table's snapshot shares. */
interface TableRead {
  readonly query: QueryFn;
  readonly snap: SnapshotRow;
  readonly tableIndex: number;
  readonly plan: TablePlan;
  /** The table's greatest key when its snapshot began: no chunk reads past it. */
  readonly upper: readonly string[];
  /** Rows per chunk. */
  readonly limit: number;
  readonly routingKey: ReturnType<typeof compileRoutingKey> | undefined;
}

/** A chunk read and its watermarks emitted, waiting for the stream to reach its high watermark. */
interface Flight {
  readonly chunk: number;
  readonly cursorBefore: string[] | null;
  readonly cursorAfter: string[] | null;
  readonly read: number;
  readonly final: boolean;
  readonly done: Promise<ChunkOutcome>;
}

/** Chunks read ahead of the stream (memory: this many chunks of rows). */
const READ_AHEAD = 4;
/**
 * The closing read (see `closeTable`) tries this often when every row it read changed within its
 * window; it reads the greatest row, then twice as many each time.
 */
const CLOSING_ATTEMPTS = 8;

/** A snapshot cannot go on (the table vanished or lost its key, the --where is invalid). */
class SnapshotFailed extends Error {}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
const RAW_TEXT = { getTypeParser: () => (v: string) => v } as unknown as pg.CustomTypesConfig;

export class SnapshotRunner {
  private stopped = false;
  private client: pg.Client | null = null;
  private clientQuery: QueryFn | null = null;
  private progress: pg.Client | null = null;
  private progressQueryFn: QueryFn | null = null;
  private wake: (() => void) | null = null;
  private loop: Promise<void> | null = null;
  private warnedMissing = false;

  constructor(private readonly opts: RunnerOptions) {}

  start(): void {
    this.loop = this.run().catch((err: unknown) => this.opts.log.error({ err: (err as Error).message }, 'snapshot runner stopped unexpectedly'));
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.opts.tap.abort(new Error('session ended'));
    this.wake?.();
    // The session ends within PGWARREN_SHUTDOWN_TIMEOUT + 5 s whatever the network does (README
    // "Failure handling"): the runner's connections hold nothing worth a graceful goodbye (reads, and progress
    // writes that are each one statement), so their sockets are destroyed at once, which fails
    // whatever query the loop waits on; the loop itself gets a short, bounded moment to notice.
    const clients = [this.client, this.progress];
    this.client = null;
    this.progress = null;
    for (const c of clients) if (c) destroyClient(c);
    await Promise.race([this.loop, new Promise((resolve) => setTimeout(resolve, STOP_WAIT_MS).unref())]);
  }

  private async run(): Promise<void> {
    const { log } = this.opts;
    let failures = 0;
    while (!this.stopped) {
      try {
        const query = await this.connection();
        const snap = await nextSnapshot(query, this.opts.slot);
        failures = 0;
        if (!snap) {
          await this.idle(this.opts.pollMs ?? 1000);
          continue;
        }
        if (this.opts.unsupported) {
          log.warn({ snapshot: snap.id }, `snapshot ${snap.id} refused: ${this.opts.unsupported}`);
          await finishSnapshot(query, snap.id, 'failed', this.opts.unsupported);
          continue;
        }
        await this.runSnapshot(query, snap);
      } catch (err) {
        if (this.stopped) return;
        this.opts.tap.abort(err as Error);
        const code = sqlState(err);
        if (code === '42P01' || code === '3F000' || code === '42501') {
          // No snapshot table, or no grant: nothing to do until setup (README) is run.
          if (!this.warnedMissing) {
            // A missing table is the normal state of a deployment that never set snapshots up: say
            // so once, quietly; a table that exists but is not granted is a setup to finish.
            log[code === '42501' ? 'warn' : 'info'](
              { err: (err as Error).message },
              code === '42501'
                ? 'snapshots unavailable: the role may not use pgwarren.snapshots; GRANT SELECT, INSERT, UPDATE ON pgwarren.snapshots TO <this role> (README "Snapshots")'
                : 'snapshots unavailable: table pgwarren.snapshots is missing; run "pgwarren setup" (README "Snapshots")',
            );
          }
          this.warnedMissing = true;
          await this.idle(30_000);
          continue;
        }
        failures++;
        log.warn({ err: (err as Error).message, attempt: failures }, 'snapshot runner: database error; retrying');
        await this.dropConnection();
        await this.idle(Math.min(30_000, 500 * 2 ** Math.min(failures, 6)));
      }
    }
  }

  private idle(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const t = setTimeout(resolve, ms);
      this.wake = () => {
        clearTimeout(t);
        resolve();
      };
    });
  }

  private async connection(): Promise<QueryFn> {
    if (!this.client || !this.clientQuery) {
      const { client, query } = await this.open('pgwarren-snapshot', `${REPLICATION_SESSION_OPTIONS} -c bytea_output=hex`, (c) => (this.client = c));
      this.client = client;
      this.clientQuery = query;
    }
    return this.clientQuery;
  }

  private async progressQuery(): Promise<QueryFn> {
    if (!this.progress || !this.progressQueryFn) {
      const { client, query } = await this.open('pgwarren-snapshot-progress', '', (c) => (this.progress = c));
      this.progress = client;
      this.progressQueryFn = query;
    }
    return this.progressQueryFn;
  }

  /**
   * A connection through the shared connectPg: its connect and every query bounded by
   * PGWARREN_CONNECT_TIMEOUT / PGWARREN_QUERY_TIMEOUT (a timed-out query destroys it; the loop
   * then opens a new one). The server's statement_timeout is the query timeout too, so a slow
   * read is also stopped in the database. `hold` gets the client while it connects, so stop()
   * can destroy a connect in progress.
   */
  private async open(applicationName: string, options: string, hold: (c: pg.Client) => void): Promise<{ client: pg.Client; query: QueryFn }> {
    const { timeouts, log } = this.opts;
    try {
      return await connectPg(
        // The text of values depends on the session options, exactly as on the replication connection.
        { ...this.opts.pg, options: `${options} -c statement_timeout=${timeouts.queryMs}`.trim() },
        { applicationName, timeouts, hold, onError: (err) => log.debug({ err: err.message }, `${applicationName} connection error`) },
      );
    } catch (err) {
      if (applicationName === 'pgwarren-snapshot') this.client = null;
      else this.progress = null;
      throw err;
    }
  }

  /** A query of the reading connection in array mode with values as Postgres' text, bounded like every query. */
  private readRows(config: pg.QueryConfig): Promise<pg.QueryResult<unknown[]>> {
    const c = this.client!;
    const { queryMs } = this.opts.timeouts;
    const work = c.query<unknown[]>({ ...config, rowMode: 'array', types: RAW_TEXT } as pg.QueryArrayConfig);
    return queryMs > 0 ? within(work, queryMs, 'reading a snapshot chunk', () => destroyClient(c)) : work;
  }

  private async dropConnection(): Promise<void> {
    const clients = [this.client, this.progress];
    this.client = null;
    this.progress = null;
    this.clientQuery = null;
    this.progressQueryFn = null;
    await Promise.all(clients.map((c) => c && closeWithin(() => c.end(), () => pgSocketOwner(c))));
  }

  private async runSnapshot(query: QueryFn, snap: SnapshotRow): Promise<void> {
    const { log, metrics } = this.opts;
    const estimate = snap.estimate ?? (await this.estimate(query, snap.tables));
    if (!(await markRunning(query, snap.id, estimate))) return;
    if (snap.state === 'pending') log.info({ snapshot: snap.id, tables: snap.tables }, `snapshot ${snap.id} started: ${snap.tables.join(', ')}`);
    else log.info({ snapshot: snap.id, table: snap.tables[snap.tableIndex], chunk: snap.chunk }, `snapshot ${snap.id} resumed`);
    if (snap.exchange && this.opts.declareExchange) {
      try {
        await this.opts.declareExchange(snap.exchange);
      } catch (err) {
        // 406: it exists with another type; 403: the broker user may not declare it. Retrying cannot help.
        const code = (err as { code?: unknown }).code;
        if (code !== 406 && code !== 403) throw err;
        const message = `exchange "${snap.exchange}" cannot be declared: ${(err as Error).message}`;
        await finishSnapshot(query, snap.id, 'failed', message);
        log.error({ snapshot: snap.id, err: message }, `snapshot ${snap.id} failed: ${message}`);
        metrics.finished(snap.id);
        return;
      }
    }
    let rows = snap.rows;
    let chunks = snap.chunks;
    const startedMs = snap.startedAt ? Date.parse(snap.startedAt) : Date.now();
    const routingKey = snap.routingKey ? compileRoutingKey(snap.routingKey) : undefined;
    for (let t = snap.tableIndex; t < snap.tables.length; t++) {
      const name = snap.tables[t]!;
      let plan: TablePlan;
      try {
        plan = await this.plan(query, name);
      } catch (err) {
        if (!(err instanceof SnapshotFailed)) throw err;
        await finishSnapshot(query, snap.id, 'failed', err.message);
        log.error({ snapshot: snap.id, table: name, err: err.message }, `snapshot ${snap.id} failed: ${err.message}`);
        metrics.finished(snap.id);
        return;
      }
      await this.opts.types.ensure(this.opts.builder.typeOids(plan.relation));
      let cursor = t === snap.tableIndex ? snap.cursor : null;
      let chunk = t === snap.tableIndex ? snap.chunk : 0;
      let upper = t === snap.tableIndex ? snap.upper : null;
      if (!upper) {
        try {
          upper = await this.greatestKey(plan);
        } catch (err) {
          if (!(await this.failOnQueryError(query, snap, plan, err))) throw err;
          return;
        }
        if (upper && !(await setUpper(query, snap.id, t, upper))) {
          log.info({ snapshot: snap.id }, `snapshot ${snap.id} cancelled`);
          metrics.finished(snap.id);
          return;
        }
      }
      const limit = Math.max(1, Math.min(snap.chunkSize, snap.rate ?? Infinity));
      // Progress is recorded in chunk order once a chunk is confirmed, on a connection of its own,
      // while the next chunk is already read (this one may be inside a chunk's transaction). At
      // most one chunk waits to be recorded when the next one starts.
      const recording: Promise<boolean>[] = [];
      let last: Promise<boolean> = Promise.resolve(true);
      const record = (confirmed: Promise<ChunkDelivery>, p: { cursor: string[] | null; chunk: number; final: boolean }) => {
        const before = last;
        last = (async () => {
          if (!(await before)) return false;
          const { count } = await confirmed;
          const ok = await recordChunk(await this.progressQuery(), snap.id, { tableIndex: t, cursor: p.cursor, chunk: p.chunk, rows: count, final: p.final });
          if (ok) {
            rows += count;
            chunks++;
            metrics.progress(snap.id, { rows, chunks, startedMs, estimate });
          }
          return ok;
        })();
        last.catch(() => undefined); // awaited below; a session ending first must not leave it unhandled
        recording.push(last);
      };
      const cancelled = () => {
        log.info({ snapshot: snap.id }, `snapshot ${snap.id} cancelled`);
        metrics.finished(snap.id);
      };
      if (!upper) {
        // An empty table: one empty chunk moves the snapshot to the next table.
        record(Promise.resolve({ count: 0, endSent: false }), { cursor: null, chunk: chunk + 1, final: true });
        if (!(await last)) return cancelled();
        continue;
      }
      const table: TableRead = { query, snap, tableIndex: t, plan, upper, limit, routingKey };
      // Up to READ_AHEAD chunks are read before the stream reaches the first one's high
      // watermark, so the stream's lag is paid once, not once per chunk.
      const flights: Flight[] = [];
      let allRead = false;
      for (;;) {
        if (this.stopped) return;
        while (recording.length > 1) if (!(await recording.shift())) return cancelled();
        if (!allRead && flights.length < READ_AHEAD) {
          const began = Date.now();
          const f = await this.startChunk(table, cursor, chunk, limit, false);
          if (f === 'failed') return;
          flights.push(f);
          cursor = f.cursorAfter;
          chunk++;
          allRead = f.final;
          if (snap.rate) {
            const wait = (f.read * 1000) / snap.rate - (Date.now() - began);
            if (wait > 0) await sleep(wait);
          }
          continue;
        }
        const head = flights.shift();
        if (!head) break;
        const outcome = await head.done;
        if (outcome.kind === 'redo') {
          // The chunks after it are read again too (the tap resolved them so): start over at it.
          log.debug({ snapshot: snap.id, table: name, chunk: head.chunk, reason: outcome.reason }, 'snapshot chunk read again');
          for (const f of flights) await f.done.catch(() => undefined);
          flights.length = 0;
          this.opts.tap.restart();
          cursor = head.cursorBefore;
          chunk = head.chunk;
          allRead = false;
          continue;
        }
        if (!head.final) {
          record(outcome.confirmed, { cursor: head.cursorAfter, chunk: head.chunk + 1, final: false });
          continue;
        }
        if ((await outcome.confirmed).endSent) {
          record(outcome.confirmed, { cursor: head.cursorAfter, chunk: head.chunk + 1, final: true });
          if (!(await last)) return cancelled();
          break;
        }
        // README "Snapshots": the final event of a table's snapshot carries `last`. The final chunk
        // published none (every row it read changed meanwhile, or it read none): the closing read
        // publishes the table's greatest rows again, the last of them marked.
        record(outcome.confirmed, { cursor: head.cursorAfter, chunk: head.chunk + 1, final: false });
        if (!(await last)) return cancelled();
        const closed = await this.closeTable(table, head.cursorAfter, head.chunk + 1);
        if (!closed) return;
        record(Promise.resolve(closed.delivery), { cursor: head.cursorAfter, chunk: closed.chunk + 1, final: true });
        if (!(await last)) return cancelled();
        break;
      }
    }
    await finishSnapshot(query, snap.id, 'done');
    metrics.finished(snap.id);
    const secs = (Date.now() - startedMs) / 1000;
    log.info({ snapshot: snap.id, rows, chunks, seconds: +secs.toFixed(1) }, `snapshot ${snap.id} done: ${rows} rows in ${chunks} chunks`);
  }

  /**
   * The closing read of a table whose final chunk published no event: the table's greatest row
   * (up to `upper`, within --where and the rule's filter) read again under watermarks like any
   * chunk, so its event carries `last`; should that row change within the window too, the
   * greatest two, four, ... rows. Null when the snapshot ended (failed, stopped).
   * When no row is left (all deleted meanwhile) there is nothing to publish.
   */
  private async closeTable(table: TableRead, cursor: readonly string[] | null, chunk: number): Promise<{ chunk: number; delivery: ChunkDelivery } | null> {
    const { snap, plan } = table;
    for (let attempt = 1; ; attempt++) {
      if (this.stopped) return null;
      const f = await this.startChunk(table, cursor, chunk, Math.min(table.limit, 2 ** (attempt - 1)), true);
      if (f === 'failed') return null;
      const outcome = await f.done;
      if (outcome.kind === 'redo') {
        this.opts.tap.restart();
        continue;
      }
      const delivery = await outcome.confirmed;
      if (delivery.endSent || f.read === 0) return { chunk, delivery };
      if (attempt >= CLOSING_ATTEMPTS) {
        this.opts.log.warn({ snapshot: snap.id, table: plan.from, attempts: attempt }, `snapshot ${snap.id}: the greatest rows of ${plan.from} kept changing; its snapshot ends without an event marked last`);
        return { chunk, delivery };
      }
      chunk++;
    }
  }

  /**
   * Start one chunk of at most `limit` rows: low watermark, SELECT (in key order, after `cursor`,
   * up to `upper`; or, for the closing read, the greatest `limit` rows up to `upper`), high
   * watermark. Its outcome comes when the stream reaches the high watermark.
   */
  private async startChunk(table: TableRead, cursor: readonly string[] | null, chunk: number, limit: number, closing: boolean): Promise<Flight | 'failed'> {
    const { query, snap, tableIndex, plan, upper, routingKey } = table;
    const { tap, builder } = this.opts;
    let final = false;
    const pending = tap.begin({
      relation: plan.relation,
      identities: plan.identities,
      exchange: snap.exchange ?? undefined,
      routingKey,
      toEvent: (row, i, end) => builder.buildRead(plan.relation, row, `${snap.id}:${tableIndex}:${chunk}:${i}`, { id: String(snap.id), chunk, last: final && end }),
    });
    // Until the outcome is awaited, a rejection (session ending) must not go unhandled.
    pending.done.catch(() => undefined);
    let rows: RawTuple[];
    try {
      await this.emit(query, pending.low, false);
      const read = await this.select(snap, plan, closing ? null : cursor, upper, limit, closing);
      rows = closing ? read.rows.reverse() : read.rows.slice(0, limit);
      // Done when nothing follows, or this chunk reached the bound (so the last row carries `last`).
      const tail = rows[rows.length - 1];
      final = closing || read.rows.length <= limit || (tail !== undefined && plan.keyIndexes.every((k, i) => tail[k] === upper[i]));
      pending.setRead({ rows, xip: read.xip });
      await this.emit(query, pending.high, true);
    } catch (err) {
      tap.abort(err as Error);
      if (await this.failOnQueryError(query, snap, plan, err)) return 'failed';
      throw err;
    }
    const tail = closing ? undefined : rows[rows.length - 1];
    return {
      chunk,
      cursorBefore: cursor ? [...cursor] : null,
      cursorAfter: tail ? plan.keyIndexes.map((i) => tail[i] as string) : cursor ? [...cursor] : null,
      read: rows.length,
      final,
      done: pending.done,
    };
  }

  /**
   * A query on the table failed in a way retrying cannot fix (a --where that does not fit, a
   * missing privilege, the table dropped): the snapshot fails with the reason. False otherwise.
   */
  private async failOnQueryError(query: QueryFn, snap: SnapshotRow, plan: TablePlan, err: unknown): Promise<boolean> {
    const code = sqlState(err);
    if (!code || !/^(42|22)/.test(code)) return false;
    const hint = code === '42501' ? `; GRANT SELECT ON ${plan.from} TO the daemon's role` : '';
    const message = `reading ${plan.from}: ${(err as Error).message}${hint}`;
    await finishSnapshot(query, snap.id, 'failed', message);
    this.opts.log.error({ snapshot: snap.id, err: message, sqlstate: code }, `snapshot ${snap.id} failed: ${message}`);
    this.opts.metrics.finished(snap.id);
    return true;
  }

  /**
   * Postgres 15 does not flush WAL for a non-transactional message, and the walsender sends only
   * flushed WAL: the watermark would wait for the next commit or the WAL writer (up to
   * wal_writer_delay). Taking an xid gives the statement a commit record, whose flush carries the
   * message with it.
   */
  private async emit(query: QueryFn, content: string, flush: boolean): Promise<void> {
    // The low watermark needs no flush: the stream only has to meet it before the high one.
    await query(`SELECT pg_logical_emit_message(false, $1, $2)${flush ? ', pg_current_xact_id()' : ''}`, [WATERMARK_PREFIX, content]);
  }

  /** The table's greatest key now, as text; null when it is empty (or --where is not applied: all rows count). */
  private async greatestKey(plan: TablePlan): Promise<string[] | null> {
    const keys = plan.keyColumns.map(quoteIdent);
    const res = await this.readRows({
      text: `SELECT ${keys.join(', ')} FROM ${plan.from} ORDER BY ${keys.map((k) => `${k} DESC`).join(', ')} LIMIT 1`,
    });
    const row = res.rows[0] as unknown as string[] | undefined;
    return row ? [...row] : null;
  }

  /**
   * The chunk's rows (one more than `limit` when there are more), and the snapshot's in-progress
   * xids; `greatest`: the `limit` greatest rows up to `upper`, greatest first.
   */
  private async select(
    snap: SnapshotRow,
    plan: TablePlan,
    cursor: readonly string[] | null,
    upper: readonly string[],
    limit: number,
    greatest: boolean,
  ): Promise<{ rows: RawTuple[]; xip: Set<number> }> {
    const q = this.clientQuery!;
    const cols = plan.relation.columns.map((col) => quoteIdent(col.name)).join(', ');
    const keys = plan.keyColumns.map(quoteIdent);
    const conditions: string[] = [];
    const values: unknown[] = [];
    if (cursor) {
      conditions.push(`(${keys.join(', ')}) > (${cursor.map((_, i) => `$${i + 1}::${plan.keyTypes[i]}`).join(', ')})`);
      values.push(...cursor);
    }
    const at = values.length;
    conditions.push(`(${keys.join(', ')}) <= (${upper.map((_, i) => `$${at + i + 1}::${plan.keyTypes[i]}`).join(', ')})`);
    values.push(...upper);
    if (snap.where) conditions.push(`(${snap.where})`);
    // README "Shaping the stream": rows a rule's filter keeps out of the stream stay out of snapshots.
    const ruleWhere = this.opts.rowFilter?.(plan.relation.schema, plan.relation.table) ?? null;
    if (ruleWhere) conditions.push(`(${ruleWhere})`);
    const sql =
      `SELECT ${cols} FROM ${plan.from}${conditions.length ? ` WHERE ${conditions.join(' AND ')}` : ''} ` +
      (greatest ? `ORDER BY ${keys.map((k) => `${k} DESC`).join(', ')} LIMIT ${limit}` : `ORDER BY ${keys.join(', ')} LIMIT ${limit + 1}`);
    await q('BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY');
    try {
      // The first statement fixes the transaction's snapshot; the chunk is read with the same one.
      const snapRes = await q<{ s: string }>('SELECT pg_current_snapshot()::text AS s');
      // Extended protocol always: one statement only, whatever the --where holds.
      const res = await this.readRows({ text: sql, values, queryMode: 'extended' } as pg.QueryConfig);
      await q('COMMIT');
      return { rows: res.rows as unknown as RawTuple[], xip: parseXip(snapRes.rows[0]!.s) };
    } catch (err) {
      await q('ROLLBACK').catch(() => undefined);
      throw err;
    }
  }

  private async plan(query: QueryFn, name: string): Promise<TablePlan> {
    const { schema, table } = splitName(name);
    const facts = await new RelationCatalog(query).refreshByName(schema, table);
    if (!facts) throw new SnapshotFailed(`table ${name} no longer exists`);
    const keyColumns = keyColumnsOf(facts);
    if (keyColumns.length === 0) throw new SnapshotFailed(`table ${name} has no primary key or replica identity index any more`);
    const ident = REPLICA_IDENTITY[facts.replicaIdentity] ?? 'default';
    const identityCols = ident === 'index' ? facts.identityIndex : ident === 'full' ? facts.columns.map((c) => c.name) : facts.primaryKey;
    const relation: RelationInfo = {
      oid: facts.oid,
      schema,
      table,
      replicaIdentity: ident,
      columns: facts.columns.map((c) => ({ ...c, inReplicaIdentity: identityCols.includes(c.name) })),
      keyColumns,
    };
    const identities = [[...keyColumns]];
    if (ident === 'index' && facts.identityIndex.join('\u0000') !== keyColumns.join('\u0000')) identities.push([...facts.identityIndex]);
    const { rows } = await query<{ name: string; type: string }>(
      `SELECT a.attname AS name, format_type(a.atttypid, a.atttypmod) AS type FROM pg_attribute a
        WHERE a.attrelid = $1 AND a.attname = ANY ($2::text[]) AND NOT a.attisdropped`,
      [facts.oid, keyColumns],
    );
    const typeOf = new Map(rows.map((r) => [r.name, r.type]));
    const keyIndexes = keyColumns.map((k) => relation.columns.findIndex((c) => c.name === k));
    if (keyIndexes.some((i) => i < 0) || keyColumns.some((k) => !typeOf.has(k))) throw new SnapshotFailed(`table ${name}: a key column is not readable`);
    return { relation, identities, keyColumns, keyIndexes, keyTypes: keyColumns.map((k) => typeOf.get(k)!), from: `${quoteIdent(schema)}.${quoteIdent(table)}` };
  }

  /** The planner's row estimate of the tables (partitions included), or null when never analyzed. */
  private async estimate(query: QueryFn, tables: readonly string[]): Promise<number | null> {
    const { rows } = await query<{ n: string | null }>(
      `SELECT CASE WHEN bool_or(c.reltuples >= 0) THEN sum(greatest(c.reltuples, 0))::int8::text END AS n
         FROM unnest($1::text[]) AS t(name)
         JOIN pg_class c ON c.oid IN (SELECT relid FROM pg_partition_tree(t.name::regclass) WHERE isleaf)
                         OR (c.oid = t.name::regclass AND c.relkind = 'r')`,
      [tables.map((t) => { const { schema, table } = splitName(t); return `${quoteIdent(schema)}.${quoteIdent(table)}`; })],
    ).catch(() => ({ rows: [] as { n: string | null }[] }));
    const n = rows[0]?.n;
    return n == null ? null : Number(n);
  }
}

/** `xmin:xmax:xip,...` (xid8) -> the in-progress xids, as the 32-bit xids the stream reports. */
export function parseXip(snapshot: string): Set<number> {
  const list = snapshot.split(':')[2] ?? '';
  const out = new Set<number>();
  for (const x of list.split(',')) if (x) out.add(Number(BigInt(x) & 0xffffffffn));
  return out;
}
