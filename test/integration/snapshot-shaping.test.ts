/**
 * Snapshot `read` events take the streamed events' path (README "Failure handling", "Snapshots", "Shaping the stream"): the transform
 * hook shapes them (a throw dead-letters the event), PGWARREN_COMPRESSION compresses them, and a
 * body over PGWARREN_MAX_MESSAGE_BYTES goes to the dead-letter exchange as a stub.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gunzipSync } from 'node:zlib';
import type { Received } from '../support/amqp.js';
import { runCli } from '../support/daemon.js';
import { uniqueName } from '../support/env.js';
import { scene } from '../support/scene.js';
import { waitUntil } from '../support/wait.js';

const TRANSFORM = `
export function transform(event) {
  const mode = event.new?.mode;
  if (mode === 'drop') return null;
  if (mode === 'throw') throw new Error('boom');
  if (mode === 'route') return { ...event, _routing_key: 'custom.read', _headers: { 'x-tenant': 'acme' } };
  return { ...event, shaped: true };
}
`;

test('read events: transformed (a throw dead-letters), gzip-compressed, an oversize one dead-lettered as a stub', async (t) => {
  const tmp = mkdtempSync(join(tmpdir(), 'pgwarren-snapshape-'));
  t.after(() => rmSync(tmp, { recursive: true, force: true }));
  const transform = join(tmp, 'transform.mjs');
  writeFileSync(transform, TRANSFORM);

  const deadExchange = uniqueName('snapshape-dead', 'amqp');
  const s = await scene(t, 'snapshape', {
    schema:
      "CREATE TABLE t (id int PRIMARY KEY, mode text, v text); CREATE TABLE marker (id int PRIMARY KEY); " +
      "INSERT INTO t VALUES (1, 'keep', 'a'), (2, 'drop', 'b'), (3, 'throw', 'c'), (4, 'route', 'd'), (5, 'keep', repeat('x', 6000)), (6, 'keep', 'f')",
    env: {
      PGWARREN_DEAD_LETTER_EXCHANGE: deadExchange,
      PGWARREN_COMPRESSION: 'gzip',
      PGWARREN_TRANSFORM: transform,
      PGWARREN_MAX_MESSAGE_BYTES: '4096',
    },
    asOwner: true,
  });
  const { db, broker, env } = s;
  await broker.declareExchange(deadExchange, 'topic');
  const events = await s.queue();
  const dead = await broker.bindQueue('#', deadExchange);
  const role = await db.daemonRole();
  await db.query(`GRANT SELECT, INSERT, UPDATE ON pgwarren.snapshots TO ${role.name}`);
  const daemon = await s.daemon();

  const r = await runCli(['snapshot', 'public.t'], env);
  assert.equal(r.code, 0, `snapshot exited ${r.code}: ${r.stdout}${r.stderr}`);
  const decoded = (m: Received) => JSON.parse(gunzipSync(m.content).toString('utf8'));
  // A streamed change after the snapshot: everything before it has arrived once it has.
  await waitUntil(async () => (await db.query(`SELECT state FROM pgwarren.snapshots`)).rows[0]?.state === 'done', { timeoutMs: 60_000, message: () => daemon.output() });
  await db.query('INSERT INTO marker VALUES (1)');
  await waitUntil(() => events.messages.some((m) => decoded(m).table === 'marker'), { timeoutMs: 30_000, message: () => `${events.messages.length} events` });

  assert.ok(events.messages.every((m) => m.properties.contentEncoding === 'gzip'), 'read events are compressed like streamed ones');
  const reads = events.messages.filter((m) => decoded(m).op === 'read');
  const bodies = reads.map(decoded);
  assert.deepEqual(bodies.map((b) => b.new.id), [1, 4, 6], 'dropped (2), dead-lettered (3, 5) events are not published');
  assert.deepEqual(bodies.map((b) => b.shaped === true), [true, false, true], 'the transform shaped them');
  assert.equal(reads[1]!.fields.routingKey, 'custom.read', "the transform's routing key");
  assert.equal(reads[1]!.properties.headers?.['x-tenant'], 'acme', "the transform's headers");
  assert.equal(reads[1]!.properties.headers?.['pgwarren-op'], 'read');
  assert.deepEqual(reads.map((m) => m.properties.messageId), bodies.map((b) => b.id));

  await waitUntil(() => dead.messages.length >= 2, { timeoutMs: 30_000, message: () => `${dead.messages.length} dead letters` });
  assert.equal(dead.messages.length, 2);
  const [threw, big] = dead.messages;
  assert.equal(threw!.body.new.id, 3, 'the event the transform threw on, as it was read');
  assert.equal(threw!.fields.routingKey, 'public.t.read');
  assert.match(String(threw!.properties.headers?.['pgwarren-error']), /transform threw: Error: boom/);
  assert.equal(threw!.properties.headers?.['pgwarren-op'], 'read');
  assert.equal(threw!.properties.contentEncoding, undefined, 'dead letters are never compressed');
  assert.match(String(big!.properties.headers?.['pgwarren-error']), /above PGWARREN_MAX_MESSAGE_BYTES \(4096\)/);
  assert.equal(big!.body.dead_letter.truncated, true, 'a stub without row values');
  assert.equal(big!.body.new, undefined);
  assert.equal(big!.body.tx, null, 'a read belongs to no transaction');
  assert.equal(big!.properties.messageId, big!.body.id);

  const metrics = await (await fetch(`http://127.0.0.1:${daemon.httpPort}/metrics`)).text();
  assert.match(metrics, /pgwarren_events_filtered_total\{reason="transform"\} 1\b/);
  assert.match(metrics, /pgwarren_dead_lettered_total\{reason="transform"\} 1\b/);
  assert.match(metrics, /pgwarren_dead_lettered_total\{reason="size"\} 1\b/);
});
