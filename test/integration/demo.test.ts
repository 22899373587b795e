/**
 * The compose demo without Docker: the same seed schema, the same example rules file, the same
 * split as docker-compose.yml (`setup` as the tables' owner, `run` as a REPLICATION role), then the
 * load generator (examples/load-generator.mjs) makes changes and the demo consumer
 * (examples/consumer.mjs) must print every one of them, the marked restocks as bulk events, and
 * the checkout.completed application event of every new order, which the business-event consumer
 * (examples/checkout-consumer.mjs, bound to `checkout.*`) prints too.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createTestDatabase, type TestDatabase } from '../support/pg.js';
import { createTestBroker, type TestBroker } from '../support/amqp.js';
import { runCli, start, type Daemon } from '../support/daemon.js';
import { testEnv, uniqueName } from '../support/env.js';
import { waitUntil } from '../support/wait.js';
import amqp from 'amqplib';

const file = (p: string) => fileURLToPath(new URL(`../../${p}`, import.meta.url));
const CONSUMER = file('examples/consumer.mjs');
const LOAD_GENERATOR = file('examples/load-generator.mjs');
const CHECKOUT_CONSUMER = file('examples/checkout-consumer.mjs');

interface Script {
  readonly stdout: string[];
  readonly stderr: string[];
  readonly exited: Promise<number | null>;
  running(): boolean;
  kill(signal: NodeJS.Signals): void;
  /** Waits for a line on stdout (or stderr) matching `re`; fails early if the script exits. */
  waitFor(re: RegExp, stream?: 'stdout' | 'stderr', timeoutMs?: number): Promise<string>;
}

const scripts = new Set<ChildProcess>();
after(() => {
  for (const c of scripts) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
});

/** Runs an example script with only the environment given (plus PATH and HOME). */
function run(script: string, env: Record<string, string>): Script {
  const child = spawn(process.execPath, [script], {
    env: { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: process.env.HOME ?? '/tmp', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  scripts.add(child);
  const out = { stdout: [] as string[], stderr: [] as string[] };
  for (const stream of ['stdout', 'stderr'] as const) {
    let pending = '';
    child[stream]!.on('data', (d: Buffer) => {
      pending += d.toString('utf8');
      const lines = pending.split('\n');
      pending = lines.pop()!;
      out[stream].push(...lines);
    });
    child[stream]!.on('end', () => pending && out[stream].push(pending));
  }
  const exited = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)));
  let done = false;
  void exited.then(() => (done = true));
  const tail = () => `stdout:\n${out.stdout.slice(-15).join('\n')}\nstderr:\n${out.stderr.slice(-15).join('\n')}`;
  return {
    ...out,
    exited,
    running: () => !done,
    kill: (signal) => child.kill(signal),
    async waitFor(re, stream = 'stdout', timeoutMs = 20_000) {
      let found: string | undefined;
      await waitUntil(
        () => {
          found = out[stream].find((l) => re.test(l));
          if (!found && done) throw new Error(`${script} exited before printing ${re}; ${tail()}`);
          return found;
        },
        { timeoutMs, message: () => `${script} did not print ${re}; ${tail()}` },
      );
      return found!;
    },
  };
}

/** Event lines of the consumer: everything it printed except duplicate notices. */
const eventLines = (s: Script) => s.stdout.filter((l) => l && !l.startsWith('duplicate '));

describe('the demo consumer prints what the load generator changes, through pgwarren', () => {
  let db: TestDatabase;
  let broker: TestBroker;
  let daemon: Daemon | undefined;
  const queues: string[] = [];
  let json: Script;
  let text: Script;
  let events: Record<string, any>[] = [];

  before(async () => {
    db = await createTestDatabase('demo');
    await db.query(readFileSync(file('docker/postgres/initdb/10-schema.sql'), 'utf8'));
    broker = await createTestBroker('demo');
    await broker.declareExchange(broker.exchange, 'topic');
    const slot = uniqueName('demo');
    const settings = {
      PGWARREN_SLOT: slot,
      PGWARREN_PUBLICATION: slot,
      PGWARREN_CONFIG: file('config/rules.example.yaml'),
      PGWARREN_AMQP_URL: testEnv().amqpUrl,
      PGWARREN_EXCHANGE: broker.exchange,
    };
    // As in docker-compose.yml: the owner runs setup, the daemon runs as a REPLICATION role.
    const setup = await runCli(['setup'], { ...settings, PGWARREN_DATABASE_URL: db.url });
    assert.equal(setup.code, 0, `setup failed:\n${setup.stdout}\n${setup.stderr}`);
    const role = await db.daemonRole();
    daemon = await start({ ...settings, PGWARREN_DATABASE_URL: role.url });
    await daemon.waitReady(30_000);
  });

  after(async () => {
    for (const s of [json, text]) if (s?.running()) s.kill('SIGKILL');
    if (daemon) assert.equal(await daemon.stop(), 0, 'pgwarren exits 0 on SIGTERM');
    for (const q of queues) await broker.channel.deleteQueue(q).catch(() => undefined);
    await broker.cleanup();
    await db.drop();
  });

  test('every committed change is printed once; each marked restock is one bulk event', async () => {
    const consumerEnv = (output: string) => {
      const queue = uniqueName(`demo-${output}`, 'amqp');
      queues.push(queue);
      return { AMQP_URL: testEnv().amqpUrl, EXCHANGE: broker.exchange, QUEUE: queue, OUTPUT: output };
    };
    json = run(CONSUMER, consumerEnv('json'));
    text = run(CONSUMER, consumerEnv('text'));
    await json.waitFor(/^consumer: consuming from queue /, 'stderr');
    await text.waitFor(/^consumer: consuming from queue /, 'stderr');
    // Subscribes by topic pattern, on a private queue that goes away with it.
    const checkout = run(CHECKOUT_CONSUMER, { AMQP_URL: testEnv().amqpUrl, EXCHANGE: broker.exchange, BINDING_KEY: 'checkout.*' });
    await checkout.waitFor(/^checkout-consumer: checkout\.\* on exchange /, 'stderr');

    const load = run(LOAD_GENERATOR, { DATABASE_URL: db.url, RATE: '50', TRANSACTIONS: '40', BULK_EVERY: '10' });
    assert.equal(await load.exited, 0, `the load generator failed:\n${load.stderr.join('\n')}`);
    const done = /^done: 40 transactions; insert=(\d+) update=(\d+) delete=(\d+); events=(\d+); bulk: (\d+) transactions, (\d+) rows$/.exec(load.stdout.at(-1) ?? '');
    assert.ok(done, `summary line: ${load.stdout.at(-1)}`);
    const [insert, update, del, appEvents, bulkTx, bulkRows] = done.slice(1).map(Number) as [number, number, number, number, number, number];
    assert.equal(load.stdout.filter((l) => /^tx \d+: /.test(l)).length, 40);
    assert.equal(bulkTx, 4, 'every 10th of 40 transactions is a restock');
    assert.ok(insert > 0 && update > 0, 'the load generator changed rows');
    const products = (await db.query('SELECT count(*)::int AS n FROM products')).rows[0].n as number;
    assert.equal(bulkRows, bulkTx * products, 'a restock updates every product');

    assert.ok(appEvents > 0, 'new orders published checkout.completed events');
    const expected = insert + update + del + bulkTx + appEvents;
    await waitUntil(() => eventLines(json).length >= expected && eventLines(text).length >= expected, {
      timeoutMs: 30_000,
      message: () => `json consumer printed ${eventLines(json).length}, text consumer ${eventLines(text).length}, of ${expected} events`,
    });
    // A marker after the load: events arrive in commit order, so nothing of the load can follow it.
    await db.query(`SELECT pg_logical_emit_message(true, 'pgwarren.event', '{"routing_key":"test.marker"}')`);
    const isMarker = (l: string) => l.includes('test.marker');
    await waitUntil(() => eventLines(json).some(isMarker) && eventLines(text).some(isMarker), { timeoutMs: 30_000, message: 'the marker reaches both consumers' });
    assert.equal(eventLines(json).length, expected + 1, 'nothing more than the changes made');
    assert.ok(isMarker(eventLines(json).at(-1)!) && isMarker(eventLines(text).at(-1)!), 'the marker is last');
    events = eventLines(json).filter((l) => !isMarker(l)).map((l) => JSON.parse(l));

    const count = (op: string) => events.filter((e) => e.op === op).length;
    assert.deepEqual(
      { insert: count('insert'), update: count('update'), delete: count('delete'), bulk: count('bulk'), message: count('message') },
      { insert, update, delete: del, bulk: bulkTx, message: appEvents },
    );
    for (const m of events.filter((e) => e.op === 'message')) {
      assert.equal(m.payload.routing_key, 'checkout.completed');
      assert.equal(m.id, `${m.tx.lsn}:${m.tx.seq}`);
      // In its order's transaction: the order's insert is in the same transaction, before it.
      assert.ok(events.some((e) => e.table === 'orders' && e.op === 'insert' && e.tx.lsn === m.tx.lsn && e.tx.seq < m.tx.seq && e.new.id === String(m.payload.order_id)));
    }
    // The business-event consumer saw exactly the checkout events.
    await waitUntil(() => eventLines(checkout).length >= appEvents, { timeoutMs: 30_000, message: () => `checkout consumer printed ${eventLines(checkout).length} of ${appEvents}` });
    assert.equal(eventLines(checkout).length, appEvents);
    for (const l of eventLines(checkout)) assert.match(l, /^checkout\.completed \S+:\d+ \{"routing_key":"checkout\.completed","order_id":\d+,/);
    checkout.kill('SIGTERM');
    assert.equal(await checkout.exited, 0);
    assert.equal(new Set(events.map((e) => e.id)).size, expected, 'every event id is distinct');
    for (const b of events.filter((e) => e.op === 'bulk')) {
      assert.deepEqual({ table: `${b.schema}.${b.table}`, reason: b.reason, counts: b.counts }, { table: 'public.products', reason: 'marker', counts: { insert: 0, update: products, delete: 0 } });
      assert.equal(b.id, `${b.tx.lsn}:bulk:public.products`);
    }
    // Seed and rules at work: orders have REPLICA IDENTITY FULL, customers' email is excluded.
    const orderUpdates = events.filter((e) => e.table === 'orders' && e.op === 'update');
    assert.ok(orderUpdates.length > 0, 'orders were updated');
    for (const e of orderUpdates) assert.ok(Array.isArray(e.changed) && e.old !== null, 'full old rows for orders');
    for (const e of events.filter((x) => x.table === 'customers')) assert.ok(!('email' in (e.new ?? {})) && !('email' in (e.old ?? {})), 'email is excluded');

    // The text consumer printed the same events, one readable line each.
    const lines = eventLines(text).filter((l) => !isMarker(l));
    assert.equal(lines.length, expected);
    for (const l of lines) assert.match(l, /^\S+:\S+ ((insert|update|delete|bulk) public\.(customers|products|orders|order_items)( |$)|message checkout\.completed \{)/);
    assert.deepEqual(new Set(lines.map((l) => l.split(' ')[0])), new Set(events.map((e) => e.id)), 'both consumers saw the same ids');
    const bulkLine = lines.find((l) => l.includes(' bulk '));
    assert.match(bulkLine!, new RegExp(`^\\S+ bulk public\\.products insert=0 update=${products} delete=0 reason=marker$`));
  });

  test('a redelivered event (same id) is printed as a skipped duplicate', async () => {
    const again = events.find((e) => e.op === 'insert');
    assert.ok(again, 'an insert event from the first test');
    const before = json.stdout.length;
    broker.channel.publish(broker.exchange, `${again.schema}.${again.table}.${again.op}`, Buffer.from(JSON.stringify(again)), { messageId: again.id, contentType: 'application/json' });
    await json.waitFor(new RegExp(`^duplicate ${again.id.replace(/[/]/g, '\\/')} skipped$`));
    await text.waitFor(new RegExp(`^duplicate ${again.id.replace(/[/]/g, '\\/')} skipped$`));
    // A new event after it, as a marker: once it is printed, anything about the duplicate was.
    const marker = { ...again, id: `${again.tx.lsn}:marker` };
    broker.channel.publish(broker.exchange, 'test.marker', Buffer.from(JSON.stringify(marker)), { messageId: marker.id, contentType: 'application/json' });
    await waitUntil(() => json.stdout.slice(before).some((l) => l.includes(marker.id)), { timeoutMs: 10_000, message: 'the marker is printed' });
    assert.deepEqual(json.stdout.slice(before, -1), [`duplicate ${again.id} skipped`], 'printed once, as a duplicate only');
    assert.equal(json.stdout.length, before + 2);
  });

  test('SIGTERM ends the load generator (with its summary) and the consumers cleanly', async () => {
    const load = run(LOAD_GENERATOR, { DATABASE_URL: db.url, RATE: '20', BULK_EVERY: '0' });
    await load.waitFor(/^tx 3: /);
    load.kill('SIGTERM');
    assert.equal(await load.exited, 0, `exit code; stderr:\n${load.stderr.join('\n')}`);
    const done = /^done: (\d+) transactions; insert=(\d+) update=(\d+) delete=(\d+); events=(\d+); bulk: 0 transactions, 0 rows$/.exec(load.stdout.at(-1) ?? '');
    assert.ok(done, `summary after SIGTERM: ${load.stdout.at(-1)}`);
    assert.ok(Number(done[1]) >= 3);
    // What it made before stopping still arrives.
    const expected = Number(done[2]) + Number(done[3]) + Number(done[4]) + Number(done[5]);
    await waitUntil(() => eventLines(json).length >= events.length + expected, {
      timeoutMs: 20_000,
      message: () => `${eventLines(json).length - events.length} of ${expected} events after SIGTERM`,
    });

    for (const consumer of [json, text]) {
      consumer.kill('SIGTERM');
      assert.equal(await consumer.exited, 0, `consumer exit code; stderr:\n${consumer.stderr.join('\n')}`);
      assert.ok(consumer.stderr.includes('consumer: SIGTERM, stopping'));
    }
  });
});

describe('npm run demo: the demo without Docker', () => {
  test('starts its own Postgres, prints events from the load generator, and removes what it made on exit', async () => {
    // DEMO_SECONDS stands in for Ctrl-C; the script handles both the same way.
    const demo = run(file('scripts/demo.mjs'), { AMQP_URL: testEnv().amqpUrl, DEMO_SECONDS: '6', RATE: '10', BULK_EVERY: '0' });
    const code = await demo.exited;
    assert.equal(code, 0, `demo exit code; stderr:\n${demo.stderr.join('\n')}`);
    const events = eventLines(demo).filter((l) => / (insert|update|delete) public\./.test(l));
    assert.ok(events.length > 0, `the demo printed events; stdout:\n${demo.stdout.slice(-10).join('\n')}`);
    const exchange = /streaming to exchange (\S+)/.exec(demo.stderr.join('\n'))?.[1];
    const queue = /consumer reads queue (\S+)/.exec(demo.stderr.join('\n'))?.[1];
    assert.ok(exchange && queue, `the demo named its exchange and queue:\n${demo.stderr.join('\n')}`);
    assert.ok(demo.stderr.includes('[demo] done'), 'the demo cleaned up');
    const conn = await amqp.connect(testEnv().amqpUrl);
    try {
      for (const [kind, name] of [['exchange', exchange], ['exchange', `${exchange}.dead`], ['queue', queue]] as const) {
        const ch = await conn.createChannel();
        ch.on('error', () => undefined);
        const exists = await (kind === 'exchange' ? ch.checkExchange(name) : ch.checkQueue(name)).then(
          () => true,
          () => false,
        );
        assert.equal(exists, false, `the demo's ${kind} ${name} is deleted`);
      }
    } finally {
      await conn.close();
    }
  });
});
