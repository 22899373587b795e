/**
 * The test harness itself: when one of these fails, every other integration test's result is
 * suspect. Private cluster, per-test databases whose drop takes their slots along, broker
 * collectors, the fault proxy, and the daemon runner's diagnostics.
 */
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import amqp from 'amqplib';
import pg from 'pg';
import { testEnv, uniqueName } from '../support/env.js';
import { createTestDatabase, listSlots, slotInfo, withAdmin } from '../support/pg.js';
import { createTestBroker } from '../support/amqp.js';
import { startProxy } from '../support/proxy.js';
import { start } from '../support/daemon.js';
import { waitUntil } from '../support/wait.js';

const databaseExists = (name: string) =>
  withAdmin(async (c) => (await c.query('SELECT 1 FROM pg_database WHERE datname = $1', [name])).rowCount === 1);

/** Whether the broker has an exchange/queue, asked on a throwaway channel (a miss closes it). */
async function brokerHas(kind: 'exchange' | 'queue', name: string): Promise<boolean> {
  const conn = await amqp.connect(testEnv().amqpUrl);
  conn.on('error', () => undefined);
  try {
    const ch = await conn.createChannel();
    ch.on('error', () => undefined);
    await (kind === 'exchange' ? ch.checkExchange(name) : ch.checkQueue(name));
    await ch.close();
    return true;
  } catch (err) {
    if ((err as { code?: number }).code === 404) return false;
    throw err;
  } finally {
    await conn.close().catch(() => undefined);
  }
}

describe('environment', () => {
  test('the private cluster decodes logically, the system one is not used', async () => {
    const env = testEnv();
    assert.notEqual(new URL(env.pgUrl).port, '5432');
    const level = await withAdmin(async (c) => (await c.query('SHOW wal_level')).rows[0].wal_level);
    assert.equal(level, 'logical');
    assert.equal(await withAdmin(async (c) => (await c.query('SHOW data_directory')).rows[0].data_directory), env.pgDatadir);
  });

  test('unique names are short, distinct and legal', () => {
    const pgName = uniqueName('Some-Long Prefix, with punctuation and far too many characters');
    assert.match(pgName, /^pgwarren_test_[a-z0-9_]+_[0-9a-f]{8}$/);
    assert.ok(pgName.length <= 63);
    assert.notEqual(uniqueName('x'), uniqueName('x'));
    assert.match(uniqueName('a_b', 'amqp'), /^pgwarren-test-[0-9a-f]{6}-a-b-[0-9a-f]{8}$/);
  });
});

describe('test databases', () => {
  test('drop() takes the database and its slots along, even one a walsender holds', async (t) => {
    const db = await createTestDatabase('harness_drop');
    t.after(() => db.drop());
    await db.query('CREATE TABLE t (id int PRIMARY KEY)');
    await db.query('CREATE PUBLICATION pub FOR TABLE t');
    const idle = uniqueName('idle');
    const held = uniqueName('held');
    await db.query("SELECT pg_create_logical_replication_slot($1, 'pgoutput')", [idle]);
    await db.query("SELECT pg_create_logical_replication_slot($1, 'pgoutput')", [held]);
    assert.deepEqual(await listSlots(db.name), [held, idle].sort());

    const info = await slotInfo(db.name, idle);
    assert.equal(info?.plugin, 'pgoutput');
    assert.equal(info?.active, false);
    assert.equal(info?.activePid, null);
    assert.match(info?.confirmedFlushLsn ?? '', /^[0-9A-F]+\/[0-9A-F]+$/);
    assert.equal(await slotInfo(db.name, 'no_such_slot'), undefined);

    // pg_recvlogical stands in for a daemon that is still streaming when the test cleans up.
    const { pgBindir } = testEnv();
    const receiver = spawn(
      join(pgBindir, 'pg_recvlogical'),
      ['-d', db.url, '--slot', held, '--start', '--no-loop', '-o', 'proto_version=1', '-o', 'publication_names=pub', '-f', '/dev/null'],
      { stdio: ['ignore', 'ignore', 'pipe'] },
    );
    const receiverExit = new Promise((resolve) => receiver.on('exit', resolve));
    t.after(() => receiver.kill('SIGKILL'));
    let stderr = '';
    receiver.stderr.on('data', (d) => (stderr += d));
    await waitUntil(async () => (await slotInfo(db.name, held))?.active, { timeoutMs: 10_000, message: () => `slot never became active: ${stderr}` });

    await db.drop();
    assert.equal(await databaseExists(db.name), false);
    assert.deepEqual(await listSlots(db.name), []);
    await receiverExit; // its walsender was terminated, and --no-loop makes it give up
    await db.drop(); // idempotent
  });

  test('the wal2json plugin decodes in the private cluster', { skip: !testEnv().wal2json && 'wal2json is not installed (Debian: postgresql-15-wal2json)' }, async (t) => {
    const db = await createTestDatabase('harness_w2j');
    t.after(() => db.drop());
    const slot = uniqueName('w2j');
    await db.query('CREATE TABLE t (id int PRIMARY KEY, v text)');
    await db.query("SELECT pg_create_logical_replication_slot($1, 'wal2json')", [slot]);
    assert.equal((await slotInfo(db.name, slot))?.plugin, 'wal2json');
    await db.query("INSERT INTO t VALUES (1, 'one')");
    // synchronous_commit=off: the commit becomes decodable only once the WAL writer flushed it.
    const actions: any[] = [];
    await waitUntil(async () => {
      const { rows } = await db.query("SELECT data FROM pg_logical_slot_get_changes($1, NULL, NULL, 'format-version', '2')", [slot]);
      actions.push(...rows.map((r) => JSON.parse(r.data)));
      return actions.some((a) => a.action === 'C');
    }, { timeoutMs: 5_000, message: () => `no commit decoded: ${JSON.stringify(actions)}` });
    const insert = actions.find((a) => a.action === 'I');
    assert.equal(insert?.table, 't');
    assert.deepEqual(insert?.columns.map((c: { value: unknown }) => c.value), [1, 'one']);
  });
});

describe('broker', () => {
  test('a bound queue collects what is published, and cleanup deletes everything it knew of', async (t) => {
    const broker = await createTestBroker('harness');
    t.after(() => broker.cleanup());
    await broker.declareExchange(broker.exchange);
    const orders = await broker.bindQueue('public.orders.*');
    const all = await broker.bindQueue();

    // An exchange declared by someone else (the daemon, in real tests), handed over for cleanup.
    const foreign = uniqueName('harness-foreign', 'amqp');
    await broker.channel.assertExchange(foreign, 'fanout', { durable: true });
    broker.track(foreign);

    broker.channel.publish(broker.exchange, 'public.orders.insert', Buffer.from('{"id":"0/1:0","n":12345678901234567890}'), { messageId: 'm1', contentType: 'application/json' });
    broker.channel.publish(broker.exchange, 'public.users.insert', Buffer.from('not json'));
    await all.waitForCount(2);
    await orders.waitForCount(1);
    assert.equal(orders.messages.length, 1);
    const [m] = orders.messages;
    assert.equal(m!.fields.routingKey, 'public.orders.insert');
    assert.equal(m!.properties.messageId, 'm1');
    assert.equal(m!.body.id, '0/1:0');
    assert.equal(m!.content.toString(), '{"id":"0/1:0","n":12345678901234567890}');
    assert.deepEqual(all.bodies().map((b) => b?.id), ['0/1:0', undefined]);
    await assert.rejects(orders.waitForCount(2, 300), /only 1 of 2 messages arrived/);

    await broker.cleanup();
    for (const name of [broker.exchange, foreign]) assert.equal(await brokerHas('exchange', name), false, name);
    for (const q of [orders.queue, all.queue]) assert.equal(await brokerHas('queue', q), false, q);
  });
});

describe('fault proxy', () => {
  const target = () => {
    const u = new URL(testEnv().amqpUrl);
    return { host: u.hostname, port: Number(u.port || 5672) };
  };
  const viaProxy = (port: number) => {
    const u = new URL(testEnv().amqpUrl);
    u.host = `127.0.0.1:${port}`;
    return u.toString();
  };

  test('forwards AMQP, cut() breaks live connections, refuse()/accept() gate new ones', async (t) => {
    const proxy = await startProxy(target());
    t.after(() => proxy.close());

    const conn = await amqp.connect(viaProxy(proxy.port));
    const closed = new Promise<unknown>((resolve) => conn.on('close', resolve));
    conn.on('error', () => undefined);
    const ch = await conn.createChannel();
    ch.on('error', () => undefined);
    const q = await ch.assertQueue('', { exclusive: true }); // server-named, gone with the connection
    assert.match(q.queue, /^amq\.gen-/);
    assert.equal(proxy.connections(), 1);

    proxy.cut();
    const reason = await closed;
    assert.ok(reason instanceof Error, 'the connection reports the loss as an error');
    assert.equal(proxy.connections(), 0);

    proxy.refuse();
    await assert.rejects(amqp.connect(viaProxy(proxy.port)));
    proxy.accept();
    const again = await amqp.connect(viaProxy(proxy.port));
    again.on('error', () => undefined);
    await again.close();
  });

  test('cut() breaks a live Postgres connection', async (t) => {
    const u = new URL(testEnv().pgUrl);
    const proxy = await startProxy({ host: u.hostname, port: Number(u.port) });
    t.after(() => proxy.close());
    u.host = `127.0.0.1:${proxy.port}`;
    const client = new pg.Client({ connectionString: u.toString() });
    const errored = new Promise<Error>((resolve) => client.on('error', resolve));
    await client.connect();
    t.after(() => client.end().catch(() => undefined));
    assert.equal((await client.query('SELECT 1 AS one')).rows[0].one, 1);
    proxy.cut();
    assert.match((await errored).message, /terminated|ECONNRESET|closed/i);
  });
});

describe('daemon runner', () => {
  test('an early exit fails waitReady at once, with the exit code and the output', async () => {
    const daemon = await start({ PGWARREN_PLUGIN: 'no-such-plugin', PGWARREN_DATABASE_URL: testEnv().pgUrl });
    const t0 = Date.now();
    await assert.rejects(daemon.waitReady(20_000), (err: Error) => {
      assert.match(err.message, /exited \(code 2/);
      assert.match(err.message, /plugin/i);
      return true;
    });
    assert.ok(Date.now() - t0 < 10_000, 'did not wait for the timeout');
    assert.equal((await daemon.exited).code, 2);
    assert.match(daemon.output(), /no-such-plugin/);
  });
});

describe('test runner', () => {
  const root = fileURLToPath(new URL('../..', import.meta.url));
  const pgCluster = join(root, 'scripts', 'pg-cluster.mjs');

  test('a test file killed while its private cluster runs: the run stops that cluster, fails, and leaves no files', async (t) => {
    const dir = mkdtempSync(join(tmpdir(), 'pgwarren-runner-'));
    t.after(() => rmSync(dir, { recursive: true, force: true }));
    const file = join(dir, 'killed.test.mjs');
    // pg_ctl starts the server in a session of its own: ending the file's process group does not end it.
    writeFileSync(
      file,
      `import { test } from 'node:test';
import { startCluster } from ${JSON.stringify(pgCluster)};
test('starts a private cluster, then dies without stopping it', async () => {
  const cluster = await startCluster();
  console.log('DATADIR=' + cluster.datadir);
  process.kill(process.pid, 'SIGKILL');
});
`,
    );
    // Without NODE_TEST_CONTEXT, which node sets in test files and which would make the inner
    // `node --test` refuse to run files.
    const { NODE_TEST_CONTEXT: _, ...env } = process.env;
    const run = spawn(process.execPath, [join(root, 'scripts', 'test.mjs'), file], { cwd: root, env, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    run.stdout.on('data', (d) => (stdout += d));
    run.stderr.on('data', (d) => (stderr += d));
    const code = await new Promise<number | null>((resolve) => run.on('close', resolve));
    const datadir = /DATADIR=(\S+)/.exec(stdout)?.[1];
    assert.ok(datadir, `the file started its cluster; output:\n${stdout}\n${stderr}`);
    t.after(async () => {
      // Only if the runner did not: stop it and remove it.
      if (!existsSync(datadir)) return;
      const { stopClustersUnder } = (await import(pgCluster)) as { stopClustersUnder(dir: string): string[] };
      stopClustersUnder(dirname(datadir));
      rmSync(dirname(datadir), { recursive: true, force: true });
    });
    assert.notEqual(code, 0, 'the run failed');
    assert.match(stderr, /stopped Postgres clusters the tests left running/);
    assert.equal(existsSync(datadir), false, 'its files are gone');
    const left = spawnSync('pgrep', ['-f', datadir], { encoding: 'utf8' });
    assert.equal(left.stdout.trim(), '', 'no process of that cluster is left');
  });
});
