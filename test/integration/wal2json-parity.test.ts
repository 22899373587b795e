/**
 * Plugin parity (README "Events": ids "identical for pgoutput and wal2json under the same table
 * selection"): two daemons read the same database, one through pgoutput and one through wal2json,
 * each with its own slot, publication and exchange. One script of mixed DML over every common
 * column type must come out of both as the same messages, byte for byte and in the same order:
 * same bodies (ids included), routing keys, message ids and headers. The only differences allowed
 * are the ones the setup itself makes: `source.plugin` and `source.slot` (each daemon needs its own
 * slot), which are normalized before comparing.
 *
 * Known wal2json 2.5 losses are kept out of the parity script, each named where it would be:
 * - float4/float8 NaN and ±Infinity are printed as JSON null by wal2json (and numeric NaN /
 *   ±Infinity likewise): nothing downstream can tell them from SQL NULL. A separate check at the
 *   end proves pgoutput delivers them as the contract's strings.
 *
 * Partitions: the publication publishes via the root, so pgoutput names the root table; wal2json
 * names the leaf, and the daemon maps it back to the root through the catalog. With a table
 * selection, wal2json's own table filters would see leaf names, so they are not pushed down while
 * partitions exist, and a partitioned table that appears later restarts the wal2json stream.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { parse as parseLossless, stringify as stringifyLossless } from 'lossless-json';
import type { TestDatabase } from '../support/pg.js';
import type { Received } from '../support/amqp.js';
import { pluginScenes, type PluginScenes, type PluginSide } from '../support/scene.js';
import { testEnv } from '../support/env.js';
import { waitUntil } from '../support/wait.js';

const wal2jsonMissing = !testEnv().wal2json;

const SCHEMA = `
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE DOMAIN posint AS int4 CHECK (VALUE > 0);
CREATE TYPE addr AS (street text, zip int4, tags text[]);
CREATE TABLE everything (
  id int4 PRIMARY KEY,
  c_bool bool, c_int2 int2, c_int4 int4, c_int8 int8, c_float4 float4, c_float8 float8,
  c_numeric numeric, c_money money, c_text text, c_varchar varchar(20), c_char char(5),
  c_bytea bytea, c_uuid uuid, c_json json, c_jsonb jsonb,
  c_date date, c_time time, c_timetz timetz, c_timestamp timestamp, c_timestamptz timestamptz, c_interval interval,
  c_inet inet, c_cidr cidr, c_macaddr macaddr,
  c_mood mood, c_posint posint, c_addr addr,
  c_range int4range, c_tsv tsvector, c_xml xml, c_point point,
  c_int4arr int4[], c_textarr text[],
  c_big text,
  c_dropped int4,
  "Mixed Case" text DEFAULT 'mc'
);
ALTER TABLE everything DROP COLUMN c_dropped;
CREATE TABLE full_ident (id int4 PRIMARY KEY, note text, n numeric, big text);
ALTER TABLE full_ident REPLICA IDENTITY FULL;
CREATE SCHEMA "Sales";
CREATE TABLE "Sales".multi_key (tenant text, id int4, val text, PRIMARY KEY (tenant, id));
-- A stored generated column: pgoutput (Postgres 15) never sends it; see its own test below.
CREATE TABLE generated_cols (id int4 PRIMARY KEY, a int4, doubled int8 GENERATED ALWAYS AS (a::int8 * 2) STORED, note text);
-- Domains over types wal2json prints specially (bytea without the hex prefix, bool and numbers bare), and
-- arrays of types the daemon converts element by element.
CREATE DOMAIN bytes_dom AS bytea;
CREATE DOMAIN f8_dom AS float8;
CREATE DOMAIN bool_dom AS bool;
CREATE DOMAIN i8_dom AS int8;
CREATE TABLE more_types (id int4 PRIMARY KEY, bd bytes_dom, fd f8_dom, bo bool_dom, i8 i8_dom, ba bytea[], tsa timestamptz[], ja jsonb[], bits bit varying(10));
-- Replica identity on an index that is not the primary key, and no key at all.
CREATE TABLE ri_index (a int4 NOT NULL, b int4 NOT NULL, c text, PRIMARY KEY (a));
CREATE UNIQUE INDEX ri_index_b ON ri_index (b);
ALTER TABLE ri_index REPLICA IDENTITY USING INDEX ri_index_b;
-- No key at all: pgoutput captures only its inserts (the keyless companion publication).
CREATE TABLE nokey (a int4, b text);
-- A partitioned table (the publication publishes via the root): see its own test below.
CREATE TABLE parted (id int4 PRIMARY KEY, v text) PARTITION BY RANGE (id);
CREATE TABLE parted_1 PARTITION OF parted FOR VALUES FROM (0) TO (100);
-- Values wal2json cannot carry (see the header): only read through pgoutput, after the parity check.
CREATE TABLE nonfinite (id int4 PRIMARY KEY, f4 float4, f8 float8, f8n float8, n numeric, ni numeric);
`;

/** ~20 kB of hex: pglz cannot squeeze it under the TOAST threshold, so it is stored out of line. */
const bigText = () => randomBytes(10_240).toString('hex');

const JSONB_TEXT = '{"big": 123456789012345678901234567890, "f": 0.1000000000000000055511151231257827, "nested": [1, {"s": "x\\"y"}, null, true]}';
const JSON_TEXT = '{ "big" : 123456789012345678901234567890,\n  "f": 0.1000000000000000055511151231257827, "dup": 1, "dup": 2 }';
const BYTEA_HEX = '00ff10807f5c22270d0a';
const TEXT_VALUE = 'multi\nline "quoted" \\ back\ttab é ✓ 😀 \u0001';
const NUMERIC_VALUE = '1234567890123456789012345678901234567890.0123456789012345';

const INSERT_EVERYTHING = `INSERT INTO everything VALUES (
  $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, decode($13, 'hex'), $14, $15, $16,
  $17, $18, $19, $20, $21, $22, $23, $24, $25, $26, $27, $28, $29, $30, $31, $32, $33, $34, $35)`;

/** Row 1: the edge values. */
function row1(big: string): unknown[] {
  return [
    1, true, -32768, 2147483647, '9223372036854775807', '1.1', '0.30000000000000004',
    NUMERIC_VALUE, '12345678.91', TEXT_VALUE, 'twenty chars max ok!', 'ab',
    BYTEA_HEX, 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', JSON_TEXT, JSONB_TEXT,
    '2024-02-29', '23:59:59.999999', '12:34:56.789+05:30', '2024-01-02 03:04:05.123456', '2024-06-30 23:59:59.123456+02',
    '1 year 2 mons 3 days 04:05:06.789',
    '192.168.0.1/24', '10.0.0.0/8', '08:00:2b:01:02:03',
    'happy', 42, '("Main ""St"", 1",12345,"{a,""b c"",NULL}")',
    '[1,10)', 'a fat cat:1A sat', '<a x="1">t &amp; u</a>', '(1.5,-2)',
    '{{1,2,3},{4,5,6}}', ['plain', null, 'with "quotes"', 'back\\slash', 'comma,here', '', 'NULL', ' spaced ', '{braces}'],
    big,
  ];
}

/** Row 3: the other extremes (minimums, -0, infinities of date/time types, empties). */
const ROW3: unknown[] = [
  3, false, 32767, -2147483648, '-9223372036854775808', '-0', '1e308',
  '-0.000000000000000000000000000000000000000001', '-0.01', '', '', '',
  '', 'ffffffff-ffff-ffff-ffff-ffffffffffff', 'null', '[]',
  'infinity', '00:00:00', '00:00:00-12', 'infinity', '-infinity',
  '-1 days +00:00:01',
  '::1', '2001:db8::/32', '00:00:00:00:00:00',
  'sad', 1, '(,,)',
  'empty', '', '<empty/>', '(0,0)',
  '{}', [],
  'small',
];

type Side = PluginSide;

/** Compact one-line summaries, for an order mismatch. */
const summary = (m: Received) => `${m.fields.routingKey} ${m.properties.messageId}`;

/** Column-level differences between two event bodies (digits kept), for a readable failure. */
function fieldDiff(a: string, b: string): string[] {
  let pa: any;
  let pb: any;
  try {
    pa = parseLossless(a);
    pb = parseLossless(b);
  } catch {
    // lossless-json refuses duplicate keys (a json column may have them): fall back to
    // JSON.parse, which may round big numbers in this report (never in the byte comparison).
    try {
      pa = JSON.parse(a);
      pb = JSON.parse(b);
    } catch (err) {
      return [`(a body is not JSON: ${(err as Error).message})`];
    }
  }
  const out: string[] = [];
  const keys = new Set([...Object.keys(pa ?? {}), ...Object.keys(pb ?? {})]);
  for (const k of keys) {
    const va = pa?.[k];
    const vb = pb?.[k];
    const isRow = va && vb && typeof va === 'object' && typeof vb === 'object' && !Array.isArray(va) && ['key', 'old', 'new'].includes(k);
    if (isRow) {
      for (const c of new Set([...Object.keys(va), ...Object.keys(vb)])) {
        const ca = c in va ? stringifyLossless(va[c]) : '(absent)';
        const cb = c in vb ? stringifyLossless(vb[c]) : '(absent)';
        if (ca !== cb) out.push(`${k}.${c}: pgoutput ${clip(ca ?? '')}  wal2json ${clip(cb ?? '')}`);
      }
    } else {
      const sa = k in (pa ?? {}) ? stringifyLossless(va) : '(absent)';
      const sb = k in (pb ?? {}) ? stringifyLossless(vb) : '(absent)';
      if (sa !== sb) out.push(`${k}: pgoutput ${clip(sa ?? '')}  wal2json ${clip(sb ?? '')}`);
    }
  }
  return out;
}

function clip(s: string, n = 160): string {
  return s.length > n ? `${s.slice(0, n)}… (${s.length} chars)` : s;
}

/** Where two strings first differ, with some context around it. */
function firstDifference(a: string, b: string): string {
  let i = 0;
  while (i < a.length && i < b.length && a[i] === b[i]) i++;
  const from = Math.max(0, i - 60);
  return (
    `first difference at character ${i}:\n` +
    `    pgoutput …${a.slice(from, i + 60)}…\n` +
    `    wal2json …${b.slice(from, i + 60)}…\n` +
    `              ${' '.repeat(i - from)}^`
  );
}

/** Everything about an AMQP message that must match, as one comparable string. */
function envelopeOf(m: Received): string {
  const p = m.properties;
  return JSON.stringify({
    routingKey: m.fields.routingKey,
    messageId: p.messageId,
    type: p.type,
    timestamp: p.timestamp,
    contentType: p.contentType,
    deliveryMode: p.deliveryMode,
    appId: p.appId,
    headers: p.headers,
  });
}

/**
 * Pairwise comparison of what the two daemons published: same count, and message by message the
 * same routing key, AMQP properties and body bytes once the source's slot and plugin (the only
 * intended differences) are normalized. Returns a readable report of every mismatch.
 */
function compareSides(pgo: Side, a: readonly Received[], w2j: Side, b: readonly Received[], dbName: string): string[] {
  const sourceOf = (s: Side) => `"source":{"name":"pgwarren","db":"${dbName}","slot":"${s.slot}","plugin":"${s.plugin}"}}`;
  const report: string[] = [];
  if (a.length !== b.length) {
    report.push(`message counts differ: pgoutput ${a.length}, wal2json ${b.length}`);
    const n = Math.max(a.length, b.length);
    for (let i = 0; i < n; i++) report.push(`  ${String(i).padStart(3)}  ${a[i] ? summary(a[i]!) : '-'}  |  ${b[i] ? summary(b[i]!) : '-'}`);
  }
  for (let i = 0; i < Math.min(a.length, b.length); i++) {
    const ma = a[i]!;
    const mb = b[i]!;
    const ta = ma.content.toString('utf8');
    const tb = mb.content.toString('utf8');
    const problems: string[] = [];
    if (!ta.endsWith(sourceOf(pgo))) problems.push(`  pgoutput body does not end with its source ${sourceOf(pgo)}`);
    if (!tb.endsWith(sourceOf(w2j))) problems.push(`  wal2json body does not end with its source ${sourceOf(w2j)}`);
    const normalized = tb.endsWith(sourceOf(w2j)) ? tb.slice(0, tb.length - sourceOf(w2j).length) + sourceOf(pgo) : tb;
    if (normalized !== ta) problems.push(...fieldDiff(ta, normalized).map((l) => `  ${l}`), `  ${firstDifference(ta, normalized)}`);
    if (envelopeOf(ma) !== envelopeOf(mb)) problems.push(`  AMQP properties differ:\n    pgoutput ${envelopeOf(ma)}\n    wal2json ${envelopeOf(mb)}`);
    if (problems.length > 0) report.push(`message ${i} (${summary(ma)} | ${summary(mb)}):\n${problems.join('\n')}`);
  }
  return report;
}

const failureText = (report: readonly string[]) =>
  `pgoutput and wal2json events differ:\n${report.slice(0, 15).join('\n')}${report.length > 15 ? `\n… ${report.length - 15} more` : ''}`;

describe('wal2json produces the same events as pgoutput', { skip: wal2jsonMissing && 'wal2json is not installed on the test Postgres server (Debian: postgresql-15-wal2json): plugin parity not checked' }, () => {
  let db: TestDatabase;
  const sides: Side[] = [];
  const big1 = bigText();
  const big1b = bigText();
  const bigF1 = bigText();
  const bigF2 = bigText();

  let scenes: PluginScenes | undefined;
  before(async () => {
    scenes = await pluginScenes('w2jparity', { schema: SCHEMA });
    db = scenes.db;
    sides.push(...scenes.sides);
  });

  after(() => scenes?.cleanup());

  test('one DML script, byte-identical events from both plugins', async () => {
    const [pgo, w2j] = sides as [Side, Side];
    const q = (sql: string, params?: unknown[]) => db.query(sql, params);

    // --- inserts with edge values and NULLs
    await q(INSERT_EVERYTHING, row1(big1));
    await q('INSERT INTO everything (id) VALUES (2)'); // every other column NULL
    await q(INSERT_EVERYTHING, ROW3);
    // The big value really lives out of line (an unchanged TOAST value is what the test is about).
    const toast = (await q("SELECT reltoastrelid::regclass::text AS rel FROM pg_class WHERE oid = 'everything'::regclass")).rows[0].rel;
    const chunks = (await q(`SELECT count(*)::int AS n FROM ${toast}`)).rows[0].n;
    assert.ok(chunks >= 10, `c_big is stored out of line (${chunks} TOAST chunks)`);
    await q('INSERT INTO full_ident VALUES (1, $1, 1.50, $2), (2, $3, NULL, $4)', ['a', bigF1, 'b', bigF2]);
    await q(`INSERT INTO "Sales".multi_key VALUES ('acme', 1, 'x'), ('acme', 2, 'y'), ('beta', 1, 'z')`);

    // --- updates
    // Default identity, key kept, TOASTed column untouched: absent from new, in unchanged_toast.
    await q(`UPDATE everything SET c_text = 'changed', c_int4 = c_int4 - 1, "Mixed Case" = 'MC' WHERE id = 1`);
    // Primary key changes.
    await q('UPDATE everything SET id = 30 WHERE id = 3');
    await q('UPDATE everything SET id = 11 WHERE id = 1'); // key change with an unchanged TOAST value
    // REPLICA IDENTITY FULL, TOASTed column untouched: new carries it, changed lists exactly `note`.
    await q("UPDATE full_ident SET note = 'a2' WHERE id = 1");
    await q('UPDATE full_ident SET n = n WHERE id = 1'); // changes nothing: changed = []
    await q("UPDATE full_ident SET id = 3, note = 'a3' WHERE id = 1"); // key change under FULL
    await q(`UPDATE "Sales".multi_key SET val = 'x2' WHERE tenant = 'acme' AND id = 1`);
    await q(`UPDATE "Sales".multi_key SET id = 10 WHERE tenant = 'beta' AND id = 1`); // part of a two-column key
    // The TOASTed value itself changes: both plugins carry the new one in full.
    await q('UPDATE everything SET c_big = $1 WHERE id = 11', [big1b]);

    // --- deletes
    await q('DELETE FROM everything WHERE id = 2');
    await q('DELETE FROM full_ident WHERE id = 2'); // full old row, TOASTed value included
    await q(`DELETE FROM "Sales".multi_key WHERE tenant = 'acme' AND id = 2`);

    // --- a transaction over several tables (plus a logical message of another prefix, ignored)
    await q('BEGIN');
    await q(INSERT_EVERYTHING, [4, ...row1(bigText()).slice(1)]);
    await q("UPDATE full_ident SET n = 2.25, note = 'tx' WHERE id = 3");
    await q("SELECT pg_logical_emit_message(true, 'other', 'not ours')");
    await q(`DELETE FROM "Sales".multi_key WHERE tenant = 'beta'`);
    await q(`INSERT INTO "Sales".multi_key VALUES ('gamma', 1, NULL)`);
    await q('UPDATE everything SET c_jsonb = $1, c_textarr = NULL WHERE id = 4', ['{"n": -1.5e+30, "k": "v"}']);
    await q('COMMIT');

    // --- truncate of two tables in one statement
    await q('TRUNCATE "Sales".multi_key, full_ident');

    // --- the flood marker: every change of the transaction becomes one bulk event per table
    await q('BEGIN');
    await q("SELECT pg_logical_emit_message(true, 'pgwarren', 'bulk')");
    await q(`INSERT INTO "Sales".multi_key VALUES ('delta', 1, 'a'), ('delta', 2, 'b')`);
    await q('UPDATE everything SET c_int2 = 7 WHERE id IN (4, 11)');
    await q("INSERT INTO full_ident VALUES (9, 'bulk', 9, 'nine')");
    await q('COMMIT');

    // --- after the flood, ordinary traffic again
    await q(`INSERT INTO "Sales".multi_key VALUES ('omega', 1, 'last')`);

    // --- domains and arrays; REPLICA IDENTITY USING INDEX; no key; a non-transactional marker
    // (a float8 domain's NaN survives wal2json: it only nulls the base float types).
    await q(
      `INSERT INTO more_types VALUES (1, '\\x0102ff', 'NaN', true, 9223372036854775807, ARRAY['\\x00ff'::bytea, NULL],
         ARRAY['2024-01-01 00:00:00.5+03'::timestamptz, NULL], ARRAY['{"a": 12345678901234567890}'::jsonb], B'101')`,
    );
    await q(`INSERT INTO ri_index VALUES (1, 10, 'x')`);
    await q(`UPDATE ri_index SET c = 'y' WHERE a = 1`);
    await q(`UPDATE ri_index SET b = 11 WHERE a = 1`);
    await q(`DELETE FROM ri_index WHERE a = 1`);
    await q(`INSERT INTO nokey VALUES (1, 'n')`);
    await q(`SELECT pg_logical_emit_message(false, 'pgwarren', 'bulk')`); // outside any transaction: no flood
    await q(`INSERT INTO nokey VALUES (2, 'after a non-transactional message')`);

    // --- the sentinel and the values wal2json cannot carry
    // wal2json 2.5 prints NaN and ±Infinity of float4/float8 (and numeric) as null: a documented,
    // unavoidable loss, so this row is compared for pgoutput only.
    await q("INSERT INTO nonfinite VALUES (1, 'NaN', 'Infinity', '-Infinity', 'NaN', '-Infinity')");

    const isSentinel = (m: Received) => m.fields.routingKey === 'public.nonfinite.insert';
    await waitUntil(() => pgo.queue.messages.some(isSentinel) && w2j.queue.messages.some(isSentinel), {
      timeoutMs: 60_000,
      message: () =>
        `sentinel not on both queues: pgoutput ${pgo.queue.messages.length}, wal2json ${w2j.queue.messages.length} messages;\n` +
        `wal2json daemon output:\n${w2j.daemon.output().slice(-4000)}`,
    });
    // The sentinel is the last change, so everything before it has arrived (commit order); a
    // duplicate needs a failure, which would have ended a session.
    for (const side of [pgo, w2j]) assert.ok(!side.daemon.logs.some((l) => /session ended/.test(String(l.msg))), 'no session failed, so nothing was sent twice');

    // The sentinel row carries values wal2json loses: compared for pgoutput alone, at the end.
    const a = pgo.queue.messages.filter((m) => !isSentinel(m));
    const b = w2j.queue.messages.filter((m) => !isSentinel(m));
    const report = compareSides(pgo, a, w2j, b, db.name);
    assert.ok(report.length === 0, failureText(report));

    // --- absolute expectations, pgoutput side (the wal2json side is byte-identical by now)
    const bodies = a.map((m) => m.body as Record<string, any>);
    const texts = a.map((m) => m.content.toString('utf8'));
    const shape = bodies.map((e) => `${e.table}.${e.op}`);
    assert.deepEqual(shape, [
      'everything.insert', 'everything.insert', 'everything.insert',
      'full_ident.insert', 'full_ident.insert',
      'multi_key.insert', 'multi_key.insert', 'multi_key.insert',
      'everything.update', 'everything.update', 'everything.update',
      'full_ident.update', 'full_ident.update', 'full_ident.update',
      'multi_key.update', 'multi_key.update',
      'everything.update',
      'everything.delete', 'full_ident.delete', 'multi_key.delete',
      // the multi-table transaction
      'everything.insert', 'full_ident.update', 'multi_key.delete', 'multi_key.insert', 'everything.update',
      'multi_key.truncate', 'full_ident.truncate',
      // the marked flood: one bulk event per table, in the order of each table's first change
      'multi_key.bulk', 'everything.bulk', 'full_ident.bulk',
      'multi_key.insert',
      'more_types.insert',
      'ri_index.insert', 'ri_index.update', 'ri_index.update', 'ri_index.delete',
      'nokey.insert', 'nokey.insert',
    ]);
    for (const [i, m] of a.entries()) assert.equal(m.properties.messageId, bodies[i]!.id);

    // Row 1 insert: value formats.
    const ins1 = bodies[0]!;
    const ins1Text = texts[0]!;
    assert.equal(ins1.new.c_int8, '9223372036854775807', 'int8 is a string');
    assert.equal(ins1.new.c_int2, -32768);
    assert.equal(ins1.new.c_int4, 2147483647);
    assert.equal(ins1.new.c_bool, true);
    assert.equal(ins1.new.c_float4, 1.1);
    assert.equal(ins1.new.c_numeric, NUMERIC_VALUE, 'numeric is the exact string');
    assert.equal(ins1.new.c_money, '$12,345,678.91');
    assert.equal(ins1.new.c_text, TEXT_VALUE);
    assert.equal(ins1.new.c_char, 'ab   ');
    assert.equal(ins1.new.c_bytea, Buffer.from(BYTEA_HEX, 'hex').toString('base64'), 'bytea is base64');
    // jsonb orders keys shorter first.
    assert.ok(ins1Text.includes('"c_jsonb":{"f":0.1000000000000000055511151231257827,"big":123456789012345678901234567890,'), `jsonb digits kept: ${clip(ins1Text.slice(ins1Text.indexOf('"c_jsonb"')), 200)}`);
    assert.ok(ins1Text.includes('"c_json":{"big":123456789012345678901234567890,"f":0.1000000000000000055511151231257827,"dup":1,"dup":2}'), 'json kept as typed');
    assert.equal(ins1.new.c_timestamptz, '2024-06-30T21:59:59.123456Z', 'timestamptz: UTC, 6 fractional digits, Z');
    assert.equal(ins1.new.c_timestamp, '2024-01-02 03:04:05.123456');
    assert.equal(ins1.new.c_timetz, '12:34:56.789+05:30');
    assert.equal(ins1.new.c_interval, '1 year 2 mons 3 days 04:05:06.789');
    assert.equal(ins1.new.c_mood, 'happy');
    assert.equal(ins1.new.c_posint, 42, 'a domain over int4 is a number');
    assert.deepEqual(ins1.new.c_addr, { street: 'Main "St", 1', zip: 12345, tags: ['a', 'b c', null] });
    assert.deepEqual(ins1.new.c_int4arr, [[1, 2, 3], [4, 5, 6]]);
    assert.deepEqual(ins1.new.c_textarr, ['plain', null, 'with "quotes"', 'back\\slash', 'comma,here', '', 'NULL', ' spaced ', '{braces}']);
    assert.equal(ins1.new.c_big, big1);
    assert.deepEqual(ins1.key, { id: 1 });
    assert.match(ins1.tx.commit_time, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$/);

    const ins2 = bodies[1]!;
    assert.equal(Object.keys(ins2.new).length, 36, 'a NULL column is present as null; a dropped one is not');
    assert.ok(Object.entries(ins2.new).every(([k, v]) => (k === 'id' ? v === 2 : k === 'Mixed Case' ? v === 'mc' : v === null)));

    const ins3 = bodies[2]!;
    assert.equal(ins3.new.c_int8, '-9223372036854775808');
    assert.ok(texts[2]!.includes('"c_float4":-0,'), 'float -0 kept');
    assert.equal(ins3.new.c_float8, 1e308);
    assert.equal(ins3.new.c_timestamptz, '-infinity');
    assert.equal(ins3.new.c_date, 'infinity');
    assert.equal(ins3.new.c_bytea, '');
    assert.deepEqual(ins3.new.c_addr, { street: null, zip: null, tags: null });
    assert.deepEqual(ins3.new.c_int4arr, []);

    // Default identity, TOASTed column untouched.
    const upd1 = bodies[8]!;
    assert.deepEqual(upd1.unchanged_toast, ['c_big']);
    assert.ok(!('c_big' in upd1.new), 'an unchanged TOAST column is absent from new, never null');
    assert.equal(upd1.old, null);
    assert.equal(upd1.changed, null);
    assert.equal(upd1.new.c_text, 'changed');
    // Key changes.
    assert.deepEqual([bodies[9]!.key, bodies[9]!.old], [{ id: 30 }, { id: 3 }]);
    assert.deepEqual([bodies[10]!.key, bodies[10]!.old, bodies[10]!.unchanged_toast], [{ id: 11 }, { id: 1 }, ['c_big']]);
    // FULL identity.
    const fu1 = bodies[11]!;
    assert.deepEqual(fu1.changed, ['note']);
    assert.equal(fu1.new.big, bigF1, 'under FULL an unchanged TOAST value is carried from the old row');
    assert.equal(fu1.old.big, bigF1);
    assert.deepEqual(fu1.unchanged_toast, []);
    assert.deepEqual(bodies[12]!.changed, []);
    assert.deepEqual(bodies[13]!.changed, ['id', 'note']);
    assert.deepEqual([bodies[13]!.key, bodies[13]!.old.id], [{ id: 3 }, 1]);
    // Two-column key.
    assert.deepEqual([bodies[14]!.key, bodies[14]!.old], [{ tenant: 'acme', id: 1 }, null]);
    assert.deepEqual([bodies[15]!.key, bodies[15]!.old], [{ tenant: 'beta', id: 10 }, { tenant: 'beta', id: 1 }]);
    // A changed TOAST value is carried in full.
    assert.equal(bodies[16]!.new.c_big, big1b);
    assert.deepEqual(bodies[16]!.unchanged_toast, []);
    // Deletes.
    assert.deepEqual([bodies[17]!.key, bodies[17]!.old, bodies[17]!.new], [{ id: 2 }, { id: 2 }, null]);
    assert.equal(bodies[18]!.old.big, bigF2);
    assert.deepEqual(bodies[19]!.old, { tenant: 'acme', id: 2 });
    // The multi-table transaction: one LSN, seq 0..4.
    const tx = bodies.slice(20, 25);
    assert.deepEqual(tx.map((e) => e.tx.seq), [0, 1, 2, 3, 4]);
    assert.equal(new Set(tx.map((e) => e.tx.lsn)).size, 1);
    assert.ok(texts[24]!.includes('"c_jsonb":{"k":"v","n":-1500000000000000000000000000000}'), 'jsonb numbers as Postgres prints them');
    assert.equal(bodies[24]!.new.c_textarr, null);
    // Truncate: one event per table, same transaction.
    assert.deepEqual(bodies.slice(25, 27).map((e) => [e.key, e.old, e.new, e.tx.seq]), [[null, null, null, 0], [null, null, null, 1]]);
    // The marker flood.
    const bulks = bodies.slice(27, 30);
    assert.deepEqual(bulks.map((e) => [e.reason, e.counts, e.tx.seq]), [
      ['marker', { insert: 2, update: 0, delete: 0 }, 0],
      ['marker', { insert: 0, update: 2, delete: 0 }, 2],
      ['marker', { insert: 1, update: 0, delete: 0 }, 4],
    ]);
    assert.deepEqual(bulks.map((e) => e.id), bulks.map((e) => `${e.tx.lsn}:bulk:${e.schema}.${e.table}`));

    // Domains and arrays.
    const more = bodies[31]!;
    assert.deepEqual(more.new, {
      id: 1, bd: 'AQL/', fd: 'NaN', bo: true, i8: '9223372036854775807', ba: ['AP8=', null],
      tsa: ['2023-12-31T21:00:00.500000Z', null], ja: [{ a: 12345678901234567000 }], bits: '101',
    });
    assert.ok(texts[31]!.includes('"ja":[{"a":12345678901234567890}]'), 'jsonb in an array keeps its digits');
    // Identity index: old carries the index columns when they change; no key: key null.
    assert.deepEqual([bodies[33]!.old, bodies[34]!.old], [null, { b: 10 }]);
    assert.deepEqual(bodies[36]!.key, null);

    // --- pgoutput only: NaN and infinities as the contract's strings (wal2json: null, see above)
    assert.equal(pgo.queue.messages.filter(isSentinel).length, 1);
    assert.equal(pgo.queue.messages.length, a.length + 1, 'the sentinel is the last message');
    const nf = pgo.queue.messages.find(isSentinel)!.body;
    assert.deepEqual(nf.new, { id: 1, f4: 'NaN', f8: 'Infinity', f8n: '-Infinity', n: 'NaN', ni: '-Infinity' });
  });

  // Postgres 15's pgoutput never sends a stored generated column; wal2json 2.5 does, and the
  // daemon's table catalog (relation-catalog.ts) lists it as an ordinary column, so the wal2json
  // side reports `doubled` where pgoutput has no such key. Fixing it needs the catalog to know
  // which columns are generated (pg_attribute.attgenerated) so the wal2json decoder can drop them.
  test('a stored generated column is left out by both plugins', async () => {
    const [pgo, w2j] = sides as [Side, Side];
    await db.query(`INSERT INTO generated_cols (id, a, note) VALUES (1, 21, 'x')`);
    await db.query('UPDATE generated_cols SET a = 22 WHERE id = 1');
    await db.query('DELETE FROM generated_cols WHERE id = 1');
    await db.query(`INSERT INTO generated_cols (id, a, note) VALUES (2, 1, 'marker')`); // nothing earlier can follow it
    const mine = (s: Side) => s.queue.messages.filter((m) => m.fields.routingKey.startsWith('public.generated_cols.'));
    const marked = (s: Side) => mine(s).some((m) => m.body.new?.note === 'marker');
    await waitUntil(() => marked(pgo) && marked(w2j), {
      timeoutMs: 30_000,
      message: () => `generated_cols events: pgoutput ${mine(pgo).length}, wal2json ${mine(w2j).length} of 4`,
    });
    assert.deepEqual(
      mine(pgo).map((m) => m.body.new),
      [{ id: 1, a: 21, note: 'x' }, { id: 1, a: 22, note: 'x' }, null, { id: 2, a: 1, note: 'marker' }],
      'pgoutput: no generated column',
    );
    const report = compareSides(pgo, mine(pgo), w2j, mine(w2j), db.name);
    assert.ok(report.length === 0, failureText(report));
  });

  test("a partition's changes are reported under the root table by both plugins", async () => {
    const [pgo, w2j] = sides as [Side, Side];
    await db.query(`INSERT INTO parted VALUES (1, 'p')`);
    await db.query(`UPDATE parted SET v = 'q' WHERE id = 1`);
    await db.query('DELETE FROM parted WHERE id = 1');
    await db.query(`INSERT INTO parted VALUES (2, 'marker')`); // nothing earlier can follow it
    const mine = (s: Side) => s.queue.messages.filter((m) => m.fields.routingKey.startsWith('public.parted'));
    const marked = (s: Side) => mine(s).some((m) => m.body.new?.v === 'marker');
    await waitUntil(() => marked(pgo) && marked(w2j), {
      timeoutMs: 30_000,
      message: () => `parted events: pgoutput ${mine(pgo).length}, wal2json ${mine(w2j).length} of 4`,
    });
    assert.deepEqual(mine(pgo).map((m) => m.fields.routingKey), ['public.parted.insert', 'public.parted.update', 'public.parted.delete', 'public.parted.insert']);
    const report = compareSides(pgo, mine(pgo), w2j, mine(w2j), db.name);
    assert.ok(report.length === 0, failureText(report));
  });
});

describe('a table selection names partitioned tables by their root, with both plugins', { skip: wal2jsonMissing && 'wal2json is not installed on the test Postgres server' }, () => {
  let db: TestDatabase;
  const sides: Side[] = [];

  let scenes: PluginScenes | undefined;
  before(async () => {
    scenes = await pluginScenes('w2jparts', {
      // No partition yet: the wal2json side starts with its table filters pushed down.
      schema: 'CREATE TABLE plain (id int4 PRIMARY KEY, v text); CREATE TABLE other (id int4 PRIMARY KEY)',
      env: { PGWARREN_TABLES: 'public.plain,public.later', PGWARREN_PUBLICATION_SYNC_INTERVAL: '1', PGWARREN_RECONNECT_MAX_DELAY: '1' },
    });
    db = scenes.db;
    sides.push(...scenes.sides);
  });

  after(() => scenes?.cleanup());

  test('a partitioned table created while running is published under its root, identically', async () => {
    const [pgo, w2j] = sides as [Side, Side];
    await db.query("INSERT INTO plain VALUES (1, 'a')");
    await db.query('INSERT INTO other VALUES (1)');
    await db.query('CREATE TABLE later (id int4 PRIMARY KEY, v text) PARTITION BY RANGE (id); CREATE TABLE later_1 PARTITION OF later FOR VALUES FROM (0) TO (100)');
    // pgoutput: the sync loop adds the root to the publication. wal2json: the stream restarts
    // without table filters, which would have dropped "public.later_1".
    await waitUntil(
      async () => (await db.query("SELECT 1 FROM pg_publication_tables WHERE pubname = $1 AND tablename = 'later'", [pgo.slot])).rows.length === 1,
      { timeoutMs: 20_000, message: 'the publication gained the partitioned table' },
    );
    await w2j.daemon.waitForLog('a partitioned table appeared', 20_000);
    await waitUntil(() => w2j.daemon.logs.filter((l) => l.msg === 'streaming').length >= 2, { timeoutMs: 20_000, message: 'the wal2json side streams again' });
    await db.query("INSERT INTO later VALUES (5, 'p')");
    await db.query("UPDATE later SET v = 'q' WHERE id = 5");
    await db.query("INSERT INTO plain VALUES (2, 'b')");
    await db.query("INSERT INTO plain VALUES (3, 'marker')"); // nothing earlier can follow it
    const marked = (s: Side) => s.queue.messages.some((m) => m.body.new?.v === 'marker');
    await waitUntil(() => marked(pgo) && marked(w2j), {
      timeoutMs: 30_000,
      message: () => `events: pgoutput ${pgo.queue.messages.length}, wal2json ${w2j.queue.messages.length} of 5`,
    });
    assert.deepEqual(pgo.queue.messages.map((m) => m.fields.routingKey), ['public.plain.insert', 'public.later.insert', 'public.later.update', 'public.plain.insert', 'public.plain.insert']);
    const report = compareSides(pgo, pgo.queue.messages, w2j, w2j.queue.messages, db.name);
    assert.ok(report.length === 0, failureText(report));
  });
});
