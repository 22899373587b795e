/**
 * pgoutput protocol version 1, text format, parsed straight from the XLogData payload.
 *
 * The replication library hands us a view into pg's socket buffer, which pg reuses for later
 * reads, so this parser runs synchronously on arrival and copies everything it keeps (strings
 * are copies; logical message contents are copied explicitly). Values stay in Postgres' text
 * form: conversion by type happens later, in `events/values.ts`, never through pg's global
 * type parsers.
 */
import { UNCHANGED_TOAST, type RawValue } from '../types.js';

export interface PgBegin { readonly tag: 'B'; readonly finalLsn: bigint; readonly commitTimeMicros: bigint; readonly xid: number }
export interface PgCommit { readonly tag: 'C'; readonly commitLsn: bigint; readonly endLsn: bigint; readonly commitTimeMicros: bigint }
export interface PgRelationColumn { readonly flags: number; readonly name: string; readonly typeOid: number; readonly typeMod: number }
export interface PgRelation {
  readonly tag: 'R';
  readonly oid: number;
  readonly schema: string;
  readonly table: string;
  readonly replicaIdentity: string;
  readonly columns: readonly PgRelationColumn[];
}
export interface PgType { readonly tag: 'Y'; readonly oid: number; readonly schema: string; readonly name: string }
export interface PgOrigin { readonly tag: 'O'; readonly lsn: bigint; readonly name: string }
export interface PgInsert { readonly tag: 'I'; readonly relationOid: number; readonly newTuple: RawValue[] }
export interface PgUpdate {
  readonly tag: 'U';
  readonly relationOid: number;
  /** 'K' = old key columns only, 'O' = the whole old row (REPLICA IDENTITY FULL), null = not sent. */
  readonly oldKind: 'K' | 'O' | null;
  readonly oldTuple: RawValue[] | null;
  readonly newTuple: RawValue[];
}
export interface PgDelete { readonly tag: 'D'; readonly relationOid: number; readonly oldKind: 'K' | 'O'; readonly oldTuple: RawValue[] }
export interface PgTruncate { readonly tag: 'T'; readonly cascade: boolean; readonly restartIdentity: boolean; readonly relationOids: readonly number[] }
export interface PgMessage { readonly tag: 'M'; readonly transactional: boolean; readonly lsn: bigint; readonly prefix: string; readonly content: Buffer }

export type PgOutputMessage =
  | PgBegin | PgCommit | PgRelation | PgType | PgOrigin | PgInsert | PgUpdate | PgDelete | PgTruncate | PgMessage;

export class PgoutputProtocolError extends Error {}

class Reader {
  pos = 0;
  constructor(private readonly buf: Buffer) {}

  u8(): number {
    return this.buf[this.pos++]!;
  }
  i16(): number {
    const v = this.buf.readInt16BE(this.pos);
    this.pos += 2;
    return v;
  }
  i32(): number {
    const v = this.buf.readInt32BE(this.pos);
    this.pos += 4;
    return v;
  }
  u32(): number {
    const v = this.buf.readUInt32BE(this.pos);
    this.pos += 4;
    return v;
  }
  u64(): bigint {
    const v = this.buf.readBigUInt64BE(this.pos);
    this.pos += 8;
    return v;
  }
  i64(): bigint {
    const v = this.buf.readBigInt64BE(this.pos);
    this.pos += 8;
    return v;
  }
  cstring(): string {
    const end = this.buf.indexOf(0, this.pos);
    if (end < 0) throw new PgoutputProtocolError('unterminated string in pgoutput message');
    const s = this.buf.toString('utf8', this.pos, end);
    this.pos = end + 1;
    return s;
  }
  text(len: number): string {
    const s = this.buf.toString('utf8', this.pos, this.pos + len);
    this.pos += len;
    return s;
  }
  bytes(len: number): Buffer {
    const b = Buffer.from(this.buf.subarray(this.pos, this.pos + len));
    this.pos += len;
    return b;
  }
}

function tuple(r: Reader): RawValue[] {
  const n = r.i16();
  const values: RawValue[] = new Array(n);
  for (let i = 0; i < n; i++) {
    const kind = r.u8();
    switch (kind) {
      case 0x6e: // 'n'
        values[i] = null;
        break;
      case 0x75: // 'u'
        values[i] = UNCHANGED_TOAST;
        break;
      case 0x74: // 't'
        values[i] = r.text(r.i32());
        break;
      default:
        // 'b' (binary) only appears when the binary option is requested, which we never do.
        throw new PgoutputProtocolError(`unexpected tuple value kind 0x${kind.toString(16)}`);
    }
  }
  return values;
}

export function parsePgoutput(buf: Buffer): PgOutputMessage {
  const r = new Reader(buf);
  const tag = String.fromCharCode(r.u8());
  switch (tag) {
    case 'B':
      return { tag, finalLsn: r.u64(), commitTimeMicros: r.i64(), xid: r.u32() };
    case 'C': {
      r.u8(); // flags, unused
      return { tag, commitLsn: r.u64(), endLsn: r.u64(), commitTimeMicros: r.i64() };
    }
    case 'O':
      return { tag, lsn: r.u64(), name: r.cstring() };
    case 'R': {
      const oid = r.u32();
      const schema = r.cstring() || 'pg_catalog';
      const table = r.cstring();
      const replicaIdentity = String.fromCharCode(r.u8());
      const n = r.i16();
      const columns: PgRelationColumn[] = [];
      for (let i = 0; i < n; i++) {
        columns.push({ flags: r.u8(), name: r.cstring(), typeOid: r.u32(), typeMod: r.i32() });
      }
      return { tag, oid, schema, table, replicaIdentity, columns };
    }
    case 'Y':
      return { tag, oid: r.u32(), schema: r.cstring(), name: r.cstring() };
    case 'I': {
      const relationOid = r.u32();
      r.u8(); // 'N'
      return { tag, relationOid, newTuple: tuple(r) };
    }
    case 'U': {
      const relationOid = r.u32();
      let marker = String.fromCharCode(r.u8());
      let oldKind: 'K' | 'O' | null = null;
      let oldTuple: RawValue[] | null = null;
      if (marker === 'K' || marker === 'O') {
        oldKind = marker;
        oldTuple = tuple(r);
        marker = String.fromCharCode(r.u8());
      }
      if (marker !== 'N') throw new PgoutputProtocolError(`update without new tuple (marker ${marker})`);
      return { tag, relationOid, oldKind, oldTuple, newTuple: tuple(r) };
    }
    case 'D': {
      const relationOid = r.u32();
      const marker = String.fromCharCode(r.u8());
      if (marker !== 'K' && marker !== 'O') throw new PgoutputProtocolError(`delete with marker ${marker}`);
      return { tag, relationOid, oldKind: marker, oldTuple: tuple(r) };
    }
    case 'T': {
      const n = r.i32();
      const options = r.u8();
      const relationOids: number[] = [];
      for (let i = 0; i < n; i++) relationOids.push(r.u32());
      return { tag, cascade: (options & 1) !== 0, restartIdentity: (options & 2) !== 0, relationOids };
    }
    case 'M': {
      const transactional = (r.u8() & 1) !== 0;
      const lsn = r.u64();
      const prefix = r.cstring();
      const content = r.bytes(r.i32());
      return { tag, transactional, lsn, prefix, content };
    }
    default:
      throw new PgoutputProtocolError(
        `unsupported pgoutput message '${tag}' (streamed transactions are not requested; is the slot shared with another consumer's options?)`,
      );
  }
}
