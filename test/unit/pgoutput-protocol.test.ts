import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parsePgoutput, PgoutputProtocolError } from '../../src/source/pgoutput-protocol.js';
import { UNCHANGED_TOAST } from '../../src/types.js';

/** Builds pgoutput v1 messages byte by byte, as the server writes them. */
class Bytes {
  private parts: Buffer[] = [];
  u8(v: number) { this.parts.push(Buffer.from([v])); return this; }
  ch(c: string) { return this.u8(c.charCodeAt(0)); }
  i16(v: number) { const b = Buffer.alloc(2); b.writeInt16BE(v); this.parts.push(b); return this; }
  i32(v: number) { const b = Buffer.alloc(4); b.writeInt32BE(v); this.parts.push(b); return this; }
  u32(v: number) { const b = Buffer.alloc(4); b.writeUInt32BE(v); this.parts.push(b); return this; }
  u64(v: bigint) { const b = Buffer.alloc(8); b.writeBigUInt64BE(v); this.parts.push(b); return this; }
  str(s: string) { this.parts.push(Buffer.from(s + '\0', 'utf8')); return this; }
  raw(b: Buffer) { this.parts.push(b); return this; }
  text(s: string) { const b = Buffer.from(s, 'utf8'); return this.ch('t').i32(b.length).raw(b); }
  done() { return Buffer.concat(this.parts); }
}

test('Begin carries the commit LSN, commit time and xid', () => {
  const msg = parsePgoutput(new Bytes().ch('B').u64(0x1a2b3c4n).u64(817_000_000_000_000n).u32(7781).done());
  assert.deepEqual(msg, { tag: 'B', finalLsn: 0x1a2b3c4n, commitTimeMicros: 817_000_000_000_000n, xid: 7781 });
});

test('Commit carries commit and end LSN', () => {
  const msg = parsePgoutput(new Bytes().ch('C').u8(0).u64(100n).u64(180n).u64(5n).done());
  assert.deepEqual(msg, { tag: 'C', commitLsn: 100n, endLsn: 180n, commitTimeMicros: 5n });
});

test('Relation: empty namespace means pg_catalog; key flags and types per column', () => {
  const buf = new Bytes().ch('R').u32(16384).str('public').str('orders').ch('d').i16(2)
    .u8(1).str('id').u32(23).i32(-1)
    .u8(0).str('note').u32(25).i32(-1).done();
  const msg = parsePgoutput(buf);
  assert.equal(msg.tag, 'R');
  if (msg.tag !== 'R') return;
  assert.equal(msg.schema, 'public');
  assert.equal(msg.replicaIdentity, 'd');
  assert.deepEqual(msg.columns.map((c) => [c.flags, c.name, c.typeOid]), [[1, 'id', 23], [0, 'note', 25]]);
  const sys = parsePgoutput(new Bytes().ch('R').u32(1).str('').str('t').ch('n').i16(0).done());
  assert.equal(sys.tag === 'R' && sys.schema, 'pg_catalog');
});

test('tuples: text (multi-byte UTF-8), null and unchanged TOAST', () => {
  const buf = new Bytes().ch('U').u32(16384).ch('N').i16(3).text('zürich ✓').ch('n').ch('u').done();
  const msg = parsePgoutput(buf);
  assert.deepEqual(msg, { tag: 'U', relationOid: 16384, oldKind: null, oldTuple: null, newTuple: ['zürich ✓', null, UNCHANGED_TOAST] });
});

test('update with old key, and with the whole old row', () => {
  const key = parsePgoutput(new Bytes().ch('U').u32(1).ch('K').i16(1).text('1').ch('N').i16(1).text('2').done());
  assert.deepEqual(key, { tag: 'U', relationOid: 1, oldKind: 'K', oldTuple: ['1'], newTuple: ['2'] });
  const full = parsePgoutput(new Bytes().ch('U').u32(1).ch('O').i16(1).text('a').ch('N').i16(1).text('b').done());
  assert.equal(full.tag === 'U' && full.oldKind, 'O');
});

test('delete and insert', () => {
  assert.deepEqual(parsePgoutput(new Bytes().ch('D').u32(9).ch('K').i16(1).text('42').done()), {
    tag: 'D', relationOid: 9, oldKind: 'K', oldTuple: ['42'],
  });
  assert.deepEqual(parsePgoutput(new Bytes().ch('I').u32(9).ch('N').i16(1).ch('n').done()), { tag: 'I', relationOid: 9, newTuple: [null] });
});

test('truncate lists every relation with its options', () => {
  const msg = parsePgoutput(new Bytes().ch('T').i32(2).u8(3).u32(10).u32(11).done());
  assert.deepEqual(msg, { tag: 'T', cascade: true, restartIdentity: true, relationOids: [10, 11] });
});

test('logical message content is copied out of the (reused) input buffer', () => {
  const buf = new Bytes().ch('M').u8(1).u64(77n).str('pgwarren').i32(4).raw(Buffer.from('bulk')).done();
  const msg = parsePgoutput(buf);
  buf.fill(0);
  assert.equal(msg.tag, 'M');
  if (msg.tag !== 'M') return;
  assert.equal(msg.transactional, true);
  assert.equal(msg.prefix, 'pgwarren');
  assert.equal(msg.content.toString(), 'bulk');
});

test('unknown messages and binary values are errors that say what happened', () => {
  assert.throws(() => parsePgoutput(new Bytes().ch('S').done()), PgoutputProtocolError);
  assert.throws(() => parsePgoutput(new Bytes().ch('I').u32(1).ch('N').i16(1).ch('b').done()), /tuple value kind/);
});
