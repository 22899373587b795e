// test-runner: long ~95 s (snapshots under writes, crashes, outages and takeovers, one after another)
/**
 * Snapshots (README "Snapshots") through real Postgres and RabbitMQ, with the daemon run as the README
 * deploys it: the owner runs setup, the daemon runs as a REPLICATION+SELECT role with the one
 * snapshot GRANT.
 *
 * The replica test is the consistency proof: writers insert, update, delete and change primary
 * keys while a snapshot runs in small chunks; a replica built by applying every event in delivery
 * order (upsert by key for read/insert/update, delete by key, a key change deletes the old key)
 * must equal the table. Both plugins.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import pg from 'pg';
import { createTestDatabase, slotInfo, type TestDatabase } from '../support/pg.js';
import { createTestBroker, type Collector, type TestBroker } from '../support/amqp.js';
import { runCli, start, type Daemon } from '../support/daemon.js';
import { testEnv, uniqueName } from '../support/env.js';
import { sleep, waitUntil } from '../support/wait.js';
import { startProxy } from '../support/proxy.js';
import { scene } from '../support/scene.js';

const wal2jsonMissing = !testEnv().wal2json;

interface Setup {
  db: TestDatabase;
  broker: TestBroker;
  queue: Collector;
  daemon: Daemon;
  /** The daemon's environment (its role's URL): also what `pgwarren snapshot` runs with. */
  env: Record<string, string>;
  slot: string;
}

type After = { after: (fn: () => Promise<unknown>) => void };

async function setup(t: After, prefix: string, schema: string, env: Record<string, string> = {}): Promise<Setup> {
  const sc = await scene(t, prefix, {
    schema: `${schema};\nCREATE TABLE marker (id int PRIMARY KEY)`,
    env: { PGWARREN_LOG_LEVEL: 'debug', ...env },
    asOwner: true,
  });
  // The one grant README "Snapshots" prescribes.
  const role = await sc.db.daemonRole();
  await sc.db.query(`GRANT SELECT, INSERT, UPDATE ON pgwarren.snapshots TO ${role.name}`);
  const queue = await sc.queue('#');
  const daemon = await sc.daemon();
  return { db: sc.db, broker: sc.broker, queue, daemon, env: sc.env, slot: sc.slot };
}

async function snapshot(s: { env: Record<string, string> }, args: string[]): Promise<number> {
  const r = await runCli(['snapshot', ...args], s.env);
  assert.equal(r.code, 0, `snapshot ${args.join(' ')} exited ${r.code}: ${r.stdout}${r.stderr}`);
  const id = Number(r.stdout.trim());
  assert.ok(Number.isInteger(id) && id > 0, `the id alone on stdout, got ${JSON.stringify(r.stdout)}`);
  return id;
}

async function snapshotState(db: TestDatabase, id: number): Promise<{ state: string; rows: number; chunks: number; error: string | null }> {
  const { rows } = await db.query('SELECT state, rows::int, chunks::int, error FROM pgwarren.snapshots WHERE id = $1', [id]);
  return rows[0];
}

async function waitDone(s: Setup, id: number, timeoutMs = 120_000): Promise<void> {
  // One read per look: two could see 'pending' and then 'running' and take that for the end.
  await waitUntil(async () => !['running', 'pending'].includes((await snapshotState(s.db, id)).state), {
    timeoutMs,
    intervalMs: 200,
    message: async () => `snapshot ${id}: ${JSON.stringify(await snapshotState(s.db, id))}\n${s.daemon.output().split('\n').slice(-20).join('\n')}`,
  });
  const st = await snapshotState(s.db, id);
  assert.equal(st.state, 'done', `snapshot ${id} ended ${st.state}: ${st.error}`);
}

/** Insert a marker row and wait for its event: everything published before it has arrived. */
async function drained(s: Setup, n: number): Promise<void> {
  await s.db.query('INSERT INTO marker VALUES ($1)', [n]);
  await waitUntil(() => s.queue.messages.some((m) => m.body?.table === 'marker' && m.body.new?.id === n), { timeoutMs: 60_000, message: `marker ${n} never arrived` });
}

const reads = (q: Collector, table?: string) => q.bodies().filter((b) => b?.op === 'read' && (!table || b.table === table));

/** Apply every event of `table` in delivery order, the way the README tells consumers to. */
function replica(q: Collector, table: string): Map<string, unknown> {
  const rows = new Map<string, unknown>();
  for (const b of q.bodies()) {
    if (b?.table !== table) continue;
    const k = (key: unknown) => JSON.stringify(key);
    switch (b.op) {
      case 'read':
      case 'insert':
        rows.set(k(b.key), b.new);
        break;
      case 'update':
        if (b.old && k(b.old) !== k(b.key)) rows.delete(k(b.old));
        rows.set(k(b.key), b.new);
        break;
      case 'delete':
        rows.delete(k(b.key));
        break;
      case 'truncate':
        rows.clear();
        break;
    }
  }
  return rows;
}

/** Pause of each writer between its transactions: four writers make at most about 2,000 a second. */
const WRITE_PAUSE_MS = 2;

/** Random small transactions (insert, update, delete, key change) until `stop` is set. */
function writers(url: string, count: number, table: string, maxId: () => number, stop: { done: boolean }): Promise<number> {
  let nextId = 10_000_000;
  const one = async (w: number) => {
    const c = new pg.Client({ connectionString: url });
    c.on('error', () => undefined);
    await c.connect();
    let ops = 0;
    try {
      while (!stop.done) {
        const id = 1 + Math.floor(Math.random() * maxId());
        const r = Math.random();
        if (r < 0.45) await c.query(`UPDATE ${table} SET v = md5(random()::text), n = n + 1 WHERE id = $1`, [id]);
        else if (r < 0.6) await c.query(`DELETE FROM ${table} WHERE id = $1`, [id]);
        else if (r < 0.75) await c.query(`INSERT INTO ${table} VALUES ($1, 'new', 0) ON CONFLICT (id) DO NOTHING`, [id]);
        else if (r < 0.9) await c.query(`UPDATE ${table} SET id = $2 WHERE id = $1`, [id, nextId++ * 10 + w]).catch(() => undefined);
        else await c.query(`INSERT INTO ${table} VALUES ($1, 'far', 0)`, [nextId++ * 10 + w]);
        ops++;
        // Paced: concurrency is what the test is about, not a write rate above what the stream
        // decodes (unpaced, four writers outran wal2json and the snapshot's watermarks fell
        // ever further behind, so it could not finish in time).
        await sleep(WRITE_PAUSE_MS);
      }
    } finally {
      await c.end().catch(() => undefined);
    }
    return ops;
  };
  return Promise.all(Array.from({ length: count }, (_, w) => one(w))).then((n) => n.reduce((a, b) => a + b, 0));
}

async function tableRows(db: TestDatabase, table: string): Promise<Map<string, unknown>> {
  const { rows } = await db.query(`SELECT id, v, n FROM ${table}`);
  return new Map(rows.map((r) => [JSON.stringify({ id: r.id }), { id: r.id, v: r.v, n: r.n }]));
}

for (const plugin of ['pgoutput', 'wal2json'] as const) {
  test(`replica built from the events equals the table after a snapshot under concurrent writes (${plugin})`, { skip: plugin === 'wal2json' && wal2jsonMissing }, async (t) => {
    const N = 3000;
    // The rows exist before the slot: only the snapshot can publish them.
    const schema = `CREATE TABLE items (id int PRIMARY KEY, v text, n int NOT NULL); INSERT INTO items SELECT g, md5(g::text), 0 FROM generate_series(1, ${N}) g`;
    const s = await setup(t, `snaprep_${plugin}`, schema, { PGWARREN_PLUGIN: plugin });
    await drained(s, 0);
    assert.equal(s.queue.messages.length, 1, 'nothing but the marker before the snapshot');
    const stop = { done: false };
    const writing = writers(s.db.url, 4, 'items', () => N, stop);
    await sleep(200);
    const id = await snapshot(s, ['public.items', '--chunk-size', '100']);
    await waitDone(s, id);
    stop.done = true;
    const ops = await writing;
    await drained(s, 1);
    const expected = await tableRows(s.db, 'items');
    const got = replica(s.queue, 'items');
    const diff: string[] = [];
    for (const [k, v] of expected) if (JSON.stringify(got.get(k)) !== JSON.stringify(v)) diff.push(`${k}: table ${JSON.stringify(v)}, replica ${JSON.stringify(got.get(k))}`);
    for (const k of got.keys()) if (!expected.has(k)) diff.push(`${k}: only in the replica`);
    assert.deepEqual(diff.slice(0, 20), [], `${diff.length} rows differ after ${ops} concurrent writes`);
    const r = reads(s.queue, 'items');
    assert.ok(r.length > N / 2, `read events: ${r.length}`);
    assert.ok(ops > 200, `the writers wrote during the snapshot (${ops})`);
    const redone = s.daemon.logs.filter((l) => l.msg === 'snapshot chunk read again');
    t.diagnostic(`${ops} concurrent writes, ${r.length} read events, ${redone.length} chunks read again: ${[...new Set(redone.map((l) => String(l.reason).replace(/\d+/g, 'N')))].join('; ')}`);
    assert.equal(r.filter((b) => b.snapshot.last).length, 1, 'one event has last: true');
    assert.equal(r.at(-1).snapshot.last, true, 'the final read event has last: true');
    assert.equal(new Set(r.map((b) => b.id)).size, r.length, 'read ids are unique within the snapshot');
    const first = s.queue.messages.find((m) => m.body?.op === 'read')!;
    assert.equal(first.fields.routingKey, 'public.items.read');
    assert.equal(first.properties.type, 'read');
    assert.equal(first.properties.messageId, first.body.id);
    assert.deepEqual(Object.keys(first.body), ['id', 'op', 'schema', 'table', 'key', 'old', 'new', 'changed', 'unchanged_toast', 'snapshot', 'tx', 'source']);
    assert.equal(first.body.old, null);
    assert.equal(first.body.changed, null);
    assert.equal(first.body.snapshot.id, String(id));
    // The slot moved on while the snapshot ran and after it.
    const slot = await slotInfo(s.db.name, s.slot);
    assert.ok(slot?.confirmedFlushLsn);
  });
}

/** Wait until the snapshot's read is inside its pg_sleep (a --where that sleeps on one row). */
async function whileReadSleeps(db: TestDatabase): Promise<void> {
  await waitUntil(
    async () => (await db.query("SELECT 1 FROM pg_stat_activity WHERE application_name = 'pgwarren-snapshot' AND wait_event = 'PgSleep'")).rows.length > 0,
    { timeoutMs: 30_000, intervalMs: 20, message: 'the snapshot read never reached its pg_sleep' },
  );
}

for (const plugin of ['pgoutput', 'wal2json'] as const) {
  test(`last: true on the final read event even when the final chunk's rows all changed within its window, or it read none (${plugin})`, { skip: plugin === 'wal2json' && wal2jsonMissing }, async (t) => {
    // Rows 1..10 in chunks of 5. A --where that sleeps on one row holds a chunk's read open
    // between its watermarks, long enough for the test to change rows in that window.
    const schema = `CREATE TABLE a (id int PRIMARY KEY, v text); INSERT INTO a SELECT g, 'v' || g FROM generate_series(1, 10) g;
      CREATE TABLE b (id int PRIMARY KEY, v text); INSERT INTO b SELECT g, 'v' || g FROM generate_series(1, 10) g;`;
    const s = await setup(t, `snaplast_${plugin}`, schema, { PGWARREN_PLUGIN: plugin });
    await drained(s, 0);
    const sleepOn = (id: number) => `(id <> ${id} OR (SELECT true FROM pg_sleep(2)))`;

    // a: the final chunk (6..10) sleeps on 8; meanwhile every row of it changes, inside its window.
    const ida = await snapshot(s, ['public.a', '--chunk-size', '5', '--where', sleepOn(8)]);
    await whileReadSleeps(s.db);
    await s.db.query("UPDATE a SET v = 'changed' WHERE id > 5");
    await waitDone(s, ida);
    // b: the first chunk sleeps on 3 (it has read past 5, so more follows); meanwhile 6..10 are
    // deleted, and the final chunk reads nothing.
    const idb = await snapshot(s, ['public.b', '--chunk-size', '5', '--where', sleepOn(3)]);
    await whileReadSleeps(s.db);
    await s.db.query('DELETE FROM b WHERE id > 5');
    await waitDone(s, idb);
    await drained(s, 1);

    for (const table of ['a', 'b']) {
      const r = reads(s.queue, table);
      assert.ok(r.length > 0, `${table}: read events`);
      assert.deepEqual(r.map((b) => b.snapshot.last), r.map((_, i) => i === r.length - 1), `${table}: last on the final read event, and only there: ${JSON.stringify(r.map((b) => [b.key.id, b.snapshot.chunk, b.snapshot.last]))}`);
      assert.equal(new Set(r.map((b) => b.id)).size, r.length, `${table}: read ids unique within the snapshot`);
      const { rows } = await s.db.query(`SELECT id, v FROM ${table}`);
      const expected = new Map(rows.map((row) => [JSON.stringify({ id: row.id }), { id: row.id, v: row.v }]));
      assert.deepEqual(replica(s.queue, table), expected, `${table}: the replica built from the events equals the table`);
    }
  });
}

test('PGWARREN_QUERY_TIMEOUT bounds a snapshot read like every query: a read that takes longer is given up and retried', async (t) => {
  const schema = 'CREATE TABLE slow (id int PRIMARY KEY); INSERT INTO slow SELECT generate_series(1, 10);';
  const s = await setup(t, 'snaptimeout', schema, { PGWARREN_QUERY_TIMEOUT: '2' });
  await drained(s, 0);
  // The read sleeps 6 s on row 3: longer than the 2 s query timeout.
  const id = await snapshot(s, ['public.slow', '--where', '(id <> 3 OR (SELECT true FROM pg_sleep(6)))']);
  const failed = await s.daemon.waitForLog((l) => l.msg === 'snapshot runner: database error; retrying', 20_000);
  assert.match(String(failed.err), /statement timeout|no answer within|timed out|timeout/i, `the read was bounded: ${String(failed.err)}`);
  assert.equal(reads(s.queue, 'slow').length, 0, 'nothing of the timed-out read was published');
  assert.equal((await runCli(['snapshot', '--cancel', String(id)], s.env)).code, 0);
});

const KEYS_SCHEMA = `
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE TABLE comp (tenant text, id int, v text, PRIMARY KEY (tenant, id));
INSERT INTO comp SELECT t, i, t || i FROM unnest(ARRAY['a', 'B', 'b', 'Z', 'é', ' x']) t, generate_series(1, 4) i;
CREATE TABLE moods (m mood PRIMARY KEY, v text);
INSERT INTO moods VALUES ('happy', 'h'), ('sad', 's'), ('ok', 'o');
CREATE TABLE uu (id uuid PRIMARY KEY, v int);
INSERT INTO uu SELECT gen_random_uuid(), g FROM generate_series(1, 40) g;
CREATE TABLE words (k text PRIMARY KEY, v int);
INSERT INTO words SELECT w, row_number() OVER () FROM unnest(ARRAY['apple', 'Apple', 'APPLE', 'banana', 'a b', 'a-b', 'ab', '', 'Zebra', 'zebra', 'ñu', '10', '9', '.']) w;
CREATE TABLE empty (id int PRIMARY KEY);
CREATE TABLE tiny (id int PRIMARY KEY, v text);
INSERT INTO tiny VALUES (1, 'only');
CREATE TABLE parted (id int PRIMARY KEY, v text) PARTITION BY RANGE (id);
CREATE TABLE parted_1 PARTITION OF parted FOR VALUES FROM (0) TO (10);
CREATE TABLE parted_2 PARTITION OF parted FOR VALUES FROM (10) TO (100);
INSERT INTO parted SELECT g, 'p' || g FROM generate_series(1, 25) g;
CREATE TABLE nokey (a int, b text);
CREATE TABLE secret (id int PRIMARY KEY);
`;

test('keys in Postgres order (composite, enum, uuid, text), empty, tiny and partitioned tables; --where; aimed at another exchange', async (t) => {
  const s = await setup(t, 'snapkeys', KEYS_SCHEMA, { PGWARREN_EXCLUDE_TABLES: 'public.secret' });
  await drained(s, 0);
  assert.deepEqual(reads(s.queue), [], 'PGWARREN_SNAPSHOT defaults to never: no read events without a request');
  const tables = ['comp', 'moods', 'uu', 'words', 'empty', 'tiny', 'parted'];
  const id = await snapshot(s, [...tables.map((x) => `public.${x}`), '--chunk-size', '3']);
  await waitDone(s, id);
  await drained(s, 1);
  const order: Record<string, string> = { comp: 'tenant, id', moods: 'm', uu: 'id', words: 'k', empty: 'id', tiny: 'id', parted: 'id' };
  for (const table of tables) {
    const keyCols = order[table]!.split(', ');
    const { rows } = await s.db.query(`SELECT ${order[table]} FROM ${table} ORDER BY ${order[table]}`);
    const expected = rows.map((r) => JSON.stringify(Object.fromEntries(keyCols.map((c) => [c, r[c]]))));
    const got = reads(s.queue, table);
    assert.deepEqual(got.map((b) => JSON.stringify(b.key)), expected, `${table}: every row once, in Postgres' key order`);
    if (got.length > 0) {
      assert.deepEqual(got.map((b) => b.snapshot.last), got.map((_, i) => i === got.length - 1), `${table}: last on the final event only`);
      assert.deepEqual(got.map((b) => b.snapshot.chunk), got.map((_, i) => Math.floor(i / 3)), `${table}: chunks of 3`);
    }
  }
  assert.deepEqual(reads(s.queue, 'moods').map((b) => b.new), [{ m: 'sad', v: 's' }, { m: 'ok', v: 'o' }, { m: 'happy', v: 'h' }]);
  assert.deepEqual(reads(s.queue, 'tiny').map((b) => b.new), [{ id: 1, v: 'only' }]);
  assert.equal(reads(s.queue, 'parted').length, 25, 'a partitioned table is read through its root, named as the root');

  const even = await snapshot(s, ['public.parted', '--where', 'id % 2 = 0', '--chunk-size', '4']);
  await waitDone(s, even);
  await drained(s, 2);
  const evens = reads(s.queue, 'parted').filter((b) => b.snapshot.id === String(even));
  assert.deepEqual(evens.map((b) => b.key.id), [2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24]);

  // Aimed at one consumer: its own exchange and routing key; the others see nothing of it.
  const replay = uniqueName('snapreplay', 'amqp');
  await s.broker.declareExchange(replay, 'topic');
  const replayQueue = await s.broker.bindQueue('#', replay);
  const aimed = await snapshot(s, ['public.tiny', '--exchange', replay, '--routing-key', 'replay.{table}.{op}']);
  await waitDone(s, aimed);
  await replayQueue.waitForCount(1);
  assert.equal(replayQueue.messages[0]!.fields.routingKey, 'replay.tiny.read');
  assert.equal(replayQueue.messages[0]!.body.snapshot.id, String(aimed));
  await drained(s, 3);
  assert.equal(reads(s.queue).filter((b) => b.snapshot.id === String(aimed)).length, 0, 'the main exchange saw nothing of it');

  // Refusals, each with its reason, and nothing recorded.
  const refused = async (args: string[], reason: RegExp) => {
    const r = await runCli(['snapshot', ...args], s.env);
    assert.equal(r.code, 2, `snapshot ${args.join(' ')}: ${r.stdout}${r.stderr}`);
    assert.match(r.stderr, reason);
  };
  await refused(['public.nokey'], /public\.nokey: no primary key or replica identity index/);
  await refused(['public.secret'], /public\.secret: not included by the configuration/);
  await refused(['public.parted_1'], /a partition of public\.parted: snapshot the partitioned table public\.parted/);
  await refused(['public.nothing_here'], /public\.nothing_here: matches no table/);
  await refused(['public.tiny', '--where', 'no_such_column > 1'], /--where does not fit public\.tiny/);
  await refused(['public.tiny', '--chunk-size', '0'], /--chunk-size: expected a positive integer/);
  await refused([], /give table globs/);
  const { rows } = await s.db.query('SELECT count(*)::int AS n FROM pgwarren.snapshots');
  assert.equal(rows[0].n, 3, 'refused requests leave no row');
});

test('kill -9 in the middle of a snapshot: the restarted daemon resumes from the last confirmed chunk, skipping none', async (t) => {
  const N = 4000;
  const s = await setup(t, 'snapkill', `CREATE TABLE big (id int PRIMARY KEY, v text); INSERT INTO big SELECT g, 'v' || g FROM generate_series(1, ${N}) g`);
  await drained(s, 0);
  const id = await snapshot(s, ['public.big', '--chunk-size', '100', '--rate', '800']);
  await waitUntil(async () => (await snapshotState(s.db, id)).chunks >= 8, { timeoutMs: 60_000, message: 'the snapshot did not progress' });
  s.daemon.kill('SIGKILL');
  await s.daemon.exited;
  const mid = await snapshotState(s.db, id);
  assert.equal(mid.state, 'running');
  assert.ok(mid.rows < N, `killed in the middle (${mid.rows} rows recorded)`);
  const before = reads(s.queue, 'big').length;
  const again = await start(s.env);
  t.after(() => again.stop());
  await again.waitReady(30_000);
  await waitDone({ ...s, daemon: again }, id);
  await drained({ ...s, daemon: again }, 1);
  const all = reads(s.queue, 'big');
  const seen = new Set(all.map((b) => b.key.id));
  const missing = [];
  for (let i = 1; i <= N; i++) if (!seen.has(i)) missing.push(i);
  assert.deepEqual(missing, [], 'every row was published at least once');
  const resumedAt = all[before]?.key.id;
  assert.ok(resumedAt !== undefined && resumedAt <= mid.rows + 1, `resumed at ${resumedAt}, after the last confirmed chunk (${mid.rows} rows)`);
  assert.ok(all.length - N < 500, `at most the chunks in flight were repeated (${all.length - N})`);
  assert.ok(again.logs.some((l) => l.msg === `snapshot ${id} resumed`));
});

test('HA takeover in the middle of a snapshot: the standby takes the slot and finishes it', async (t) => {
  const N = 3000;
  const s = await setup(t, 'snapha', `CREATE TABLE big (id int PRIMARY KEY, v text); INSERT INTO big SELECT g, 'v' || g FROM generate_series(1, ${N}) g`);
  const standby = await start(s.env);
  t.after(() => standby.stop());
  await standby.waitForLog('standing by', 30_000);
  await drained(s, 0);
  const id = await snapshot(s, ['public.big', '--chunk-size', '100', '--rate', '1000']);
  await waitUntil(async () => (await snapshotState(s.db, id)).chunks >= 5, { timeoutMs: 60_000, message: 'the snapshot did not progress' });
  assert.ok(!standby.logs.some((l) => l.component === 'snapshot'), 'the standby runs no snapshot while it does not hold the slot');
  s.daemon.kill('SIGKILL');
  await s.daemon.exited;
  await waitDone({ ...s, daemon: standby }, id);
  await drained({ ...s, daemon: standby }, 1);
  const seen = new Set(reads(s.queue, 'big').map((b) => b.key.id));
  const missing = [];
  for (let i = 1; i <= N; i++) if (!seen.has(i)) missing.push(i);
  assert.deepEqual(missing, [], 'every row was published at least once');
  assert.ok(standby.logs.some((l) => l.msg === `snapshot ${id} resumed`), 'the instance that took over resumed it');
});

test('a broker outage in the middle of a snapshot: it resumes in the next session and publishes every row', async (t) => {
  const target = new URL(testEnv().amqpUrl);
  const proxy = await startProxy({ host: target.hostname, port: Number(target.port || 5672) });
  t.after(() => proxy.close());
  target.host = `127.0.0.1:${proxy.port}`;
  const N = 3000;
  const s = await setup(t, 'snapbroker', `CREATE TABLE big (id int PRIMARY KEY, v text); INSERT INTO big SELECT g, 'v' || g FROM generate_series(1, ${N}) g`, {
    PGWARREN_AMQP_URL: target.toString(),
  });
  await drained(s, 0);
  const id = await snapshot(s, ['public.big', '--chunk-size', '100', '--rate', '1000']);
  await waitUntil(async () => (await snapshotState(s.db, id)).chunks >= 5, { timeoutMs: 60_000, message: 'the snapshot did not progress' });
  proxy.refuse();
  proxy.cut();
  await s.daemon.waitForLog('session ended', 20_000);
  await sleep(1500);
  proxy.accept();
  await waitDone(s, id);
  await drained(s, 1);
  const seen = new Set(reads(s.queue, 'big').map((b) => b.key.id));
  const missing = [];
  for (let i = 1; i <= N; i++) if (!seen.has(i)) missing.push(i);
  assert.deepEqual(missing, [], 'every row was published at least once');
  assert.ok(s.daemon.logs.some((l) => l.msg === `snapshot ${id} resumed`), 'the next session resumed it');
});

test('--wait follows a snapshot to its end, --list and status show progress, --cancel stops one; /metrics shows it while it runs', async (t) => {
  const s = await setup(
    t,
    'snapctl',
    `CREATE TABLE big (id int PRIMARY KEY, v text); INSERT INTO big SELECT g, 'v' || g FROM generate_series(1, 3000) g; ANALYZE big;
     CREATE TABLE small (id int PRIMARY KEY); INSERT INTO small SELECT generate_series(1, 30)`,
  );
  await drained(s, 0);
  const slow = await snapshot(s, ['public.big', '--chunk-size', '50', '--rate', '200']);
  const waiting = runCli(['snapshot', '--cancel', 'x'], s.env);
  assert.equal((await waiting).code, 2, '--cancel needs a number');
  await waitUntil(async () => (await snapshotState(s.db, slow)).chunks >= 2, { timeoutMs: 30_000 });
  const metrics = await (await fetch(`http://127.0.0.1:${s.daemon.httpPort}/metrics`)).text();
  assert.match(metrics, new RegExp(`^pgwarren_snapshot_rows\\{snapshot="${slow}"\\} \\d+$`, 'm'));
  assert.match(metrics, new RegExp(`^pgwarren_snapshot_rows_per_second\\{snapshot="${slow}"\\} [0-9.e+-]+$`, 'm'));
  assert.match(metrics, new RegExp(`^pgwarren_snapshot_eta_seconds\\{snapshot="${slow}"\\} [0-9.e+-]+$`, 'm'));
  const listed = await runCli(['snapshot', '--list'], s.env);
  assert.equal(listed.code, 0);
  assert.match(listed.stdout, new RegExp(`^  ${slow}  running +public\\.big: \\d+ rows, \\d+ chunks, \\d+ rows/s, ETA \\S+, at public\\.big$`, 'm'));
  const status = await runCli(['status', '--json'], s.env);
  const report = JSON.parse(status.stdout);
  assert.equal(report.snapshots[0].id, slow);
  assert.equal(report.snapshots[0].state, 'running');
  assert.equal(report.snapshots[0].estimatedRows, 3000);
  const followed = runCli(['snapshot', '--wait', 'public.small', '--chunk-size', '3'], s.env);
  const cancelled = await runCli(['snapshot', '--cancel', String(slow)], s.env);
  assert.equal(cancelled.code, 0);
  assert.equal(cancelled.stdout.trim(), `snapshot ${slow} cancelled`);
  const done = await followed;
  assert.equal(done.code, 0, done.stderr);
  assert.match(done.stderr, /done +public\.small: 30 rows, 10 chunks/, 'not a terminal: progress lines, the last one done');
  const smallId = Number(done.stdout.trim());
  assert.equal((await snapshotState(s.db, slow)).state, 'cancelled');
  await drained(s, 1);
  assert.ok(reads(s.queue, 'big').length < 3000, 'the cancelled snapshot stopped');
  assert.equal(reads(s.queue, 'small').filter((b) => b.snapshot.id === String(smallId)).length, 30);
  const again = await runCli(['snapshot', '--cancel', String(slow)], s.env);
  assert.equal(again.stdout.trim(), `snapshot ${slow} was already cancelled`);
  const unknown = await runCli(['snapshot', '--cancel', '99999'], s.env);
  assert.equal(unknown.code, 2);
  const after = await runCli(['snapshot', '--list', '--json'], s.env);
  assert.deepEqual(JSON.parse(after.stdout).map((x: { state: string }) => x.state), ['cancelled', 'done']);
  const metricsAfter = await (await fetch(`http://127.0.0.1:${s.daemon.httpPort}/metrics`)).text();
  assert.doesNotMatch(metricsAfter, /pgwarren_snapshot_rows\{/, 'finished snapshots leave /metrics');
  const emptySelection = await runCli(['snapshot', '--wait', 'public.big', '--where', 'id < 0'], s.env);
  assert.equal(emptySelection.code, 0, 'an empty selection is a done snapshot');
});

test('PGWARREN_SNAPSHOT=initial: every included table once, when setup or run creates the slot', async (t) => {
  const schema = `CREATE TABLE a (id int PRIMARY KEY); INSERT INTO a SELECT generate_series(1, 12);
                  CREATE TABLE b (k text PRIMARY KEY); INSERT INTO b VALUES ('x'), ('y');
                  CREATE TABLE keyless (v int); INSERT INTO keyless VALUES (1);`;
  // setup creates the slot: it records the initial snapshot, the daemon publishes it.
  const s = await setup(t, 'snapinit', schema, { PGWARREN_SNAPSHOT: 'initial', PGWARREN_SNAPSHOT_CHUNK_SIZE: '5' });
  await waitUntil(() => reads(s.queue).length >= 14, { timeoutMs: 30_000, message: () => `reads: ${reads(s.queue).length}` });
  await drained(s, 0);
  assert.deepEqual(reads(s.queue, 'a').map((b) => b.key.id), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
  assert.deepEqual(reads(s.queue, 'b').map((b) => b.key.k), ['x', 'y']);
  assert.equal(reads(s.queue, 'keyless').length, 0);
  // The daemon records 'done' after the last chunk's confirm, which may come after the marker's
  // event reached the queue: wait for the snapshot to end, then check what it was.
  const { rows } = await s.db.query('SELECT id, kind, tables FROM pgwarren.snapshots');
  assert.deepEqual(rows.map(({ kind, tables }) => ({ kind, tables })), [{ kind: 'initial', tables: ['public.a', 'public.b', 'public.marker'] }]);
  await waitDone(s, rows[0].id);
  // A restart does not repeat it.
  await s.daemon.stop();
  const again = await start(s.env);
  t.after(() => again.stop());
  await again.waitReady(30_000);
  await drained({ ...s, daemon: again }, 1);
  assert.equal(reads(s.queue, 'a').length, 12);

  // run creates the slot (the owner runs the daemon, no setup): the same.
  const db = await createTestDatabase('snapinit_run');
  t.after(() => db.drop());
  await db.query(schema);
  const broker = await createTestBroker('snapinit_run');
  t.after(() => broker.cleanup());
  await broker.declareExchange(broker.exchange, 'topic');
  const queue = await broker.bindQueue('#');
  const slot = uniqueName('snapinit_run');
  const daemon = await start({
    PGWARREN_DATABASE_URL: db.url,
    PGWARREN_AMQP_URL: testEnv().amqpUrl,
    PGWARREN_SLOT: slot,
    PGWARREN_PUBLICATION: slot,
    PGWARREN_EXCHANGE: broker.exchange,
    PGWARREN_SNAPSHOT: 'initial',
  });
  t.after(() => daemon.stop());
  await queue.waitForCount(14, 30_000);
  assert.deepEqual(reads(queue, 'a').map((b) => b.key.id), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
  await daemon.waitForLog((l) => l.table === 'public.keyless' && /initial snapshot leaves out/.test(String(l.msg)));
});

test('a table the daemon may not read: the snapshot fails with the GRANT it needs, and the next one runs', async (t) => {
  const s = await setup(t, 'snapgrant', 'CREATE TABLE locked (id int PRIMARY KEY); INSERT INTO locked VALUES (1); CREATE TABLE open_ (id int PRIMARY KEY); INSERT INTO open_ VALUES (7)');
  const role = await s.db.daemonRole();
  await s.db.query(`REVOKE SELECT ON locked FROM ${role.name}`);
  const r = await runCli(['snapshot', '--wait', 'public.locked'], s.env);
  assert.equal(r.code, 1, r.stderr);
  assert.match(r.stderr, /snapshot \d+ failed: reading "public"\."locked": permission denied for table locked; GRANT SELECT ON "public"\."locked" TO the daemon's role/);
  const next = await runCli(['snapshot', '--wait', 'public.open_'], s.env);
  assert.equal(next.code, 0, next.stderr);
  await drained(s, 1);
  assert.deepEqual(reads(s.queue, 'open_').map((b) => b.key.id), [7]);
});
