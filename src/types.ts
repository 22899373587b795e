/**
 * The shared vocabulary of pgwarren. Everything downstream of `source/` speaks these types and
 * never learns which output plugin produced a change.
 *
 * Glossary
 * - LSN: a WAL position, always a `bigint` inside the process (`lsn.ts` parses and formats the
 *   textual `X/Y` forms at the edges).
 * - commit LSN: where a transaction's commit record starts (pgoutput Begin `final_lsn`, wal2json's
 *   `lsn` on `B`/`C`). It names the transaction in event ids.
 * - end LSN: where the commit record ends. Reporting it as flushed tells Postgres the transaction is
 *   done; reporting more could make it skip a transaction whose commit starts right there.
 * - Change: one row change (or one truncated table) as the slot delivered it, values still in
 *   Postgres' text form.
 * - seq: a change's 0-based position among the changes of its transaction for the configured tables.
 * - Event: the JSON document published for a Change (README "Events").
 * - Outgoing message: an event (or a batch of them) with routing key and AMQP properties, tagged
 *   with the transaction it belongs to so the checkpoint can account for its confirm.
 * - checkpoint: the pure bookkeeping that answers "highest LSN safe to acknowledge".
 * - session: one pair of live connections (replication + broker). Any failure ends the session and
 *   a new one resumes from the slot's confirmed position: the slot is the durable buffer.
 */

export type Op = 'insert' | 'update' | 'delete' | 'truncate';
export type RowOp = Exclude<Op, 'truncate'>;
export const OPS: readonly Op[] = ['insert', 'update', 'delete', 'truncate'];

/** Marks a TOASTed value the change did not carry (pgoutput 'u', wal2json omission). */
export const UNCHANGED_TOAST: unique symbol = Symbol('unchanged-toast');
export type RawValue = string | null | typeof UNCHANGED_TOAST;

/** Values of one row, aligned with `RelationInfo.columns`; `undefined` = column not sent. */
export type RawTuple = ReadonlyArray<RawValue | undefined>;

export type ReplicaIdentity = 'default' | 'full' | 'index' | 'nothing';

export interface ColumnInfo {
  readonly name: string;
  readonly typeOid: number;
  readonly typeMod: number;
  /** Part of the replica identity as the plugin reported it. */
  readonly inReplicaIdentity: boolean;
}

export interface RelationInfo {
  /** Postgres OID of the table; 0 when the plugin did not tell (wal2json). */
  readonly oid: number;
  readonly schema: string;
  readonly table: string;
  readonly replicaIdentity: ReplicaIdentity;
  readonly columns: readonly ColumnInfo[];
  /** Columns of the event `key`: primary key, else replica identity index; empty = no key. */
  readonly keyColumns: readonly string[];
}

/** Which part of the old row a change carries. */
export type OldKind = 'full' | 'key' | 'none';

export interface RowChange {
  readonly kind: 'change';
  readonly op: RowOp;
  readonly relation: RelationInfo;
  readonly old: RawTuple | null;
  readonly oldKind: OldKind;
  readonly new: RawTuple | null;
}

export interface TruncateChange {
  readonly kind: 'truncate';
  readonly relation: RelationInfo;
  readonly cascade: boolean;
  readonly restartIdentity: boolean;
}

export type Change = RowChange | TruncateChange;

export interface TxBegin {
  readonly kind: 'begin';
  readonly xid: number;
  readonly commitLsn: bigint;
  /** ISO-8601 UTC with microseconds, e.g. 2026-11-22T09:23:15.561510Z */
  readonly commitTime: string;
}

export interface TxCommit {
  readonly kind: 'commit';
  readonly commitLsn: bigint;
  readonly endLsn: bigint;
}

/** pg_logical_emit_message() as the slot delivered it. */
export interface LogicalMessage {
  readonly kind: 'message';
  readonly transactional: boolean;
  readonly prefix: string;
  readonly content: Buffer;
}

/** What a decoder yields, in stream order. Relation metadata never escapes the decoder. */
export type Decoded = TxBegin | TxCommit | Change | LogicalMessage;

/** The transaction context every event of a transaction shares. */
export interface TxInfo {
  readonly xid: number;
  readonly commitLsn: bigint;
  readonly commitTime: string;
}

export type Plugin = 'pgoutput' | 'wal2json';

export interface SourceInfo {
  readonly name: 'pgwarren';
  readonly db: string;
  readonly slot: string;
  readonly plugin: Plugin;
}
