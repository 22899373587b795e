// test-runner: long ~60 s (exactly once across crashes, cuts and takeovers, for both plugins)
/**
 * The stream sink through a real RabbitMQ stream (README "Replay with streams", README "Replay with streams"):
 * every change lands exactly once, in commit order, across kill -9, a cut stream connection, an
 * HA takeover and a broker restart (that one in machine-wide.test.ts), for both plugins and with batching; partitions keep a row's
 * events together; the stdout sink writes the same events as JSON lines.
 */
import { execFileSync } from 'node:child_process';
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createTestDatabase } from '../support/pg.js';
import { startProxy } from '../support/proxy.js';
import { rabbitmqctl } from '../support/amqp.js';
import { freePort, runCli, setupAsOwner, start, type Daemon } from '../support/daemon.js';
import { testEnv, uniqueName } from '../support/env.js';
import { sleep, waitUntil } from '../support/wait.js';
import { assertExactlyOnceInOrder, events, rowsOf, streamFixture as fixture, streamUrl } from '../support/stream.js';

async function exactlyOnce(t: { after(fn: () => Promise<unknown>): void }, prefix: string, extraEnv: Record<string, string>) {
  const target = { host: new URL(testEnv().amqpUrl).hostname, port: 5552 };
  const proxy = await startProxy(target);
  t.after(() => proxy.close());
  const f = await fixture(prefix, { PGWARREN_STREAM_URL: streamUrl(proxy.port), ...extraEnv });
  t.after(() => f.cleanup());
  const total = 900;
  let written = 0;
  let stopWriting = false;
  const first = await start(f.env);
  await first.waitReady(30_000);
  await f.stream.read();
  // A steady workload: small transactions of inserts, each followed by an update of a row.
  const writer = (async () => {
    while (written < total && !stopWriting) {
      await f.db.query('BEGIN');
      await f.db.query("INSERT INTO orders SELECT g, 'new' FROM generate_series($1::int, $1::int + 4) g", [written + 1]);
      await f.db.query('UPDATE orders SET n = n + 1 WHERE id = $1', [written + 1]);
      await f.db.query('COMMIT');
      written += 5;
      await sleep(10);
    }
  })();
  t.after(async () => {
    stopWriting = true;
    await writer.catch(() => undefined);
  });
  const daemons: Daemon[] = [first];
  // 1. kill -9 at random moments, three times.
  let current = first;
  for (let round = 0; round < 3; round++) {
    await sleep(300 + Math.random() * 1200);
    current.kill('SIGKILL');
    await current.exited;
    current = await start(f.env);
    daemons.push(current);
    t.after(() => current.stop());
    await current.waitReady(30_000);
  }
  // 2. The stream connection cut mid-stream: the daemon reconnects on its own.
  await sleep(300 + Math.random() * 500);
  proxy.cut();
  await current.waitForLog((l) => /session ended/.test(String(l.msg)), 30_000);
  await current.waitReady(30_000);
  // 3. HA takeover: a standby on the same slot takes over when the active one dies.
  const standby = await start(f.env);
  t.after(() => standby.stop());
  await standby.waitForLog('standing by', 30_000);
  await sleep(200 + Math.random() * 500);
  current.kill('SIGKILL');
  await standby.waitReady(30_000);
  await writer;
  await f.db.query("INSERT INTO orders VALUES (1000000, 'marker')");
  await f.stream.waitFor((ms) => events(ms).some((e) => e.new?.id === 1000000), () => `marker not in the stream (${events(f.stream.messages).length} events)`);
  const all = assertExactlyOnceInOrder(f.stream.messages);
  const rows = rowsOf(all);
  for (let i = 1; i <= written; i++) assert.ok(rows.has(i), `row ${i} is in the stream`);
  assert.equal(all.filter((e) => e.op === 'update').length, written / 5, 'every update once');
  assert.ok(
    daemons.concat(standby).some((d) => d.logs.some((l) => /continues after publishing id/.test(String(l.msg)))),
    'a restarted daemon found where the stream ended',
  );
  assert.equal(await standby.stop(), 0);
}

describe('stream sink: exactly once', () => {
  test('pgoutput: kill -9 (3x), a cut connection and an HA takeover; every change once, in commit order', async (t) => {
    await exactlyOnce(t, 'streamx', {});
  });

  test('wal2json with batching: the same, with batched messages', async (t) => {
    if (!testEnv().wal2json) return t.skip('wal2json is not installed');
    await exactlyOnce(t, 'streamb', { PGWARREN_PLUGIN: 'wal2json', PGWARREN_BATCH_MAX_EVENTS: '7' });
  });

});

describe('stream sink: a silent broker', () => {
  test('confirms that stop coming end the session within the stall bound; nothing lost or doubled', async (t) => {
    const proxy = await startProxy({ host: new URL(testEnv().amqpUrl).hostname, port: 5552 });
    t.after(() => proxy.close());
    // The stall bound is 3 broker heartbeats (README "Failure handling"): 3 s here, not the default 30 s.
    const f = await fixture('streams', { PGWARREN_STREAM_URL: streamUrl(proxy.port), PGWARREN_BROKER_HEARTBEAT: '1' });
    t.after(() => f.cleanup());
    const daemon = await start(f.env);
    t.after(() => daemon.stop());
    await daemon.waitReady(30_000);
    await f.stream.read();
    await f.db.query("INSERT INTO orders VALUES (1, 'before')");
    await f.stream.waitFor((ms) => events(ms).length >= 1, () => 'row 1 arrives');
    // The connection stays open, but nothing comes back: no confirm, no close.
    proxy.stall();
    await f.db.query("INSERT INTO orders VALUES (2, 'during')");
    const stalled = await daemon.waitForLog((l) => /no confirm for \d+ s/.test(String(l.err ?? l.msg)), 60_000);
    assert.match(String(stalled.err ?? stalled.msg), /no confirm for 3 s \(3 x PGWARREN_BROKER_HEARTBEAT\)/);
    proxy.resume();
    await daemon.waitReady(60_000);
    await f.db.query("INSERT INTO orders VALUES (3, 'after')");
    await f.stream.waitFor((ms) => events(ms).some((e) => e.new?.id === 3), () => `row 3 arrives (${events(f.stream.messages).length} events)`);
    const all = assertExactlyOnceInOrder(f.stream.messages);
    assert.deepEqual([...rowsOf(all)], [1, 2, 3]);
  });
});

describe('stream sink: contents and partitions', () => {
  test('message properties: message_id, the §5 headers as application properties, the event as body', async (t) => {
    const f = await fixture('streamp');
    t.after(() => f.cleanup());
    const daemon = await start(f.env);
    t.after(() => daemon.stop());
    await daemon.waitReady(30_000);
    await f.stream.read();
    await f.db.query("INSERT INTO orders VALUES (1, 'new')");
    await f.stream.waitFor((ms) => ms.length >= 1, () => 'the event arrives');
    const [m] = f.stream.messages;
    assert.equal(m!.messageId, m!.body.id);
    assert.equal(m!.body.op, 'insert');
    assert.deepEqual(m!.body.new, { id: 1, status: 'new', n: 0 });
    assert.equal(m!.props['pgwarren-schema'], 'public');
    assert.equal(m!.props['pgwarren-table'], 'orders');
    assert.equal(m!.props['pgwarren-op'], 'insert');
    assert.equal(m!.props['pgwarren-lsn'], m!.body.tx.lsn);
    assert.equal(Number(m!.props['pgwarren-xid']), m!.body.tx.xid);
    assert.equal(m!.props['pgwarren-tx-index'], '0');
    const metrics = await (await fetch(`http://127.0.0.1:${daemon.httpPort}/metrics`)).text();
    assert.match(metrics, /pgwarren_events_published_total\{table="public.orders",op="insert"\} 1/);
    assert.match(metrics, /pgwarren_stream_deduplicated_total 0/);
  });

  test('partitions: the super-stream topology, and every row in one partition, in order, with batching', async (t) => {
    const partitions = 3;
    const f = await fixture('streamq', { PGWARREN_BATCH_MAX_EVENTS: '5' }, partitions);
    t.after(() => f.cleanup());
    const daemon = await start(f.env);
    t.after(() => daemon.stop());
    await daemon.waitReady(30_000);
    await f.stream.read();
    await f.db.query("INSERT INTO orders SELECT g, 'new' FROM generate_series(1, 60) g");
    for (let round = 1; round <= 3; round++) await f.db.query('UPDATE orders SET n = $1', [round]);
    await f.db.query('DELETE FROM orders WHERE id % 2 = 0');
    const expected = 60 + 3 * 60 + 30;
    await f.stream.waitFor((ms) => events(ms).length >= expected, () => `${events(f.stream.messages).length} of ${expected} events`);
    const all = assertExactlyOnceInOrder(f.stream.messages);
    assert.equal(all.length, expected);
    const partitionOfRow = new Map<number, number>();
    for (const m of f.stream.messages) {
      for (const e of Array.isArray(m.body) ? m.body : [m.body]) {
        const id = e.key.id as number;
        const p = partitionOfRow.get(id);
        assert.ok(p === undefined || p === m.partition, `row ${id} is in partitions ${p} and ${m.partition}`);
        partitionOfRow.set(id, m.partition);
      }
    }
    assert.equal(new Set(partitionOfRow.values()).size, partitions, 'rows spread over every partition');
    // Declared so that 3.11+ super-stream consumers find it: x-super-stream exchange, ordered bindings.
    const exchanges = rabbitmqctl(['-q', 'list_exchanges', 'name', 'type', 'arguments']);
    assert.match(exchanges, new RegExp(`${f.stream.name}\\s+direct\\s+\\[\\{"x-super-stream",true\\}\\]`));
    const bindings = rabbitmqctl(['-q', 'list_bindings', 'source_name', 'destination_name', 'routing_key', 'arguments']);
    for (let i = 0; i < partitions; i++) {
      assert.match(bindings, new RegExp(`${f.stream.name}\\s+${f.stream.name}-${i}\\s+${i}\\s+\\[\\{"x-stream-partition-order",${i}\\}\\]`));
    }
  });

  test('stdout sink: one JSON line per event on standard output, logs on standard error', async (t) => {
    const db = await createTestDatabase('stdout');
    t.after(() => db.drop());
    await db.query('CREATE TABLE orders (id int PRIMARY KEY, status text NOT NULL)');
    const slot = uniqueName('stdout');
    const env = await setupAsOwner(db, { PGWARREN_SLOT: slot, PGWARREN_PUBLICATION: slot, PGWARREN_SINK: 'stdout' });
    const daemon = await start(env);
    t.after(() => daemon.stop());
    await daemon.waitReady(30_000);
    await db.query("INSERT INTO orders SELECT g, 'x' FROM generate_series(1, 3) g");
    // The daemon helper parses every JSON line of stdout: here those are the events.
    await waitUntil(() => daemon.logs.length >= 3, { timeoutMs: 20_000, message: () => daemon.output().slice(-2000) });
    assert.deepEqual(
      daemon.logs.map((e) => (e as any).new.id),
      [1, 2, 3],
    );
    assert.ok(daemon.logs.every((l) => (l as any).op === 'insert' && l.msg === undefined), 'no log line on stdout');
    assert.match(daemon.output(), /"msg":"streaming"/, 'logs went to stderr');
    assert.equal(await daemon.stop(), 0);
  });
});

describe('examples/stream-consumer.mjs', () => {
  test('a named consumer resumes from its server-side offset, or starts from first or an offset', async (t) => {
    const f = await fixture('streamc');
    t.after(() => f.cleanup());
    const daemon = await start(f.env);
    t.after(() => daemon.stop());
    await daemon.waitReady(30_000);
    await f.stream.read();
    await f.db.query("INSERT INTO orders SELECT g, 'x' FROM generate_series(1, 5) g");
    await f.stream.waitFor((ms) => ms.length >= 5, () => 'five events in the stream');
    const consume = async (env: Record<string, string>) => {
      const out = execFileSync(process.execPath, ['examples/stream-consumer.mjs'], {
        encoding: 'utf8',
        timeout: 30_000,
        env: { PATH: process.env.PATH, STREAM_URL: streamUrl(), STREAM: f.stream.name, CONSUMER: 'reader', OUTPUT: 'json', ...env },
      });
      return out.trim().split('\n').map((l) => JSON.parse(l).new.id as number);
    };
    assert.deepEqual(await consume({ EXIT_AFTER: '3' }), [1, 2, 3], 'a new consumer starts at first');
    assert.deepEqual(await consume({ EXIT_AFTER: '2' }), [4, 5], 'started again, it resumes after its stored offset');
    assert.deepEqual(await consume({ EXIT_AFTER: '1', RESET: '1', START: 'first' }), [1], 'RESET=1 starts at START');
    assert.deepEqual(await consume({ EXIT_AFTER: '1', RESET: '1', START: String(f.stream.messages[3]!.offset) }), [4], 'or at an offset');
  });

  test('PGWARREN_COMPRESSION: gzip bodies in the stream, which the consumer reads by their content-encoding', async (t) => {
    const f = await fixture('streamz');
    t.after(() => f.cleanup());
    const daemon = await start({ ...f.env, PGWARREN_COMPRESSION: 'gzip' });
    t.after(() => daemon.stop());
    await daemon.waitReady(30_000);
    await f.stream.read();
    await f.db.query("INSERT INTO orders SELECT g, 'x' FROM generate_series(1, 3) g");
    await f.stream.waitFor((ms) => ms.length >= 3, () => 'three messages in the stream');
    for (const m of f.stream.messages) assert.deepEqual([...m.content.subarray(0, 2)], [0x1f, 0x8b], 'a gzip body');
    const out = execFileSync(process.execPath, ['examples/stream-consumer.mjs'], {
      encoding: 'utf8',
      timeout: 30_000,
      env: { PATH: process.env.PATH, STREAM_URL: streamUrl(), STREAM: f.stream.name, CONSUMER: 'zreader', OUTPUT: 'json', EXIT_AFTER: '3' },
    });
    assert.deepEqual(out.trim().split('\n').map((l) => JSON.parse(l).new.id as number), [1, 2, 3]);
  });
});

describe('stream sink: large messages', () => {
  test('big batches do not overflow a frame, and an event over the frame size is skipped, not blocking', async (t) => {
    const f = await fixture('streaml', { PGWARREN_BATCH_MAX_EVENTS: '40' });
    t.after(() => f.cleanup());
    const daemon = await start(f.env);
    t.after(() => daemon.stop());
    await daemon.waitReady(30_000);
    await f.stream.read();
    // 200 rows of 20 kB in one transaction: batches of about 800 kB, several per publish cycle.
    await f.db.query("INSERT INTO orders SELECT g, repeat('x', 20000) FROM generate_series(1, 200) g");
    // One row whose event alone is larger than the broker's frame size (1 MiB).
    await f.db.query("INSERT INTO orders VALUES (1000, repeat('y', 1100000))");
    await f.db.query("INSERT INTO orders VALUES (1001, 'marker')");
    await f.stream.waitFor((ms) => events(ms).some((e) => e.new?.id === 1001), () => `marker not in the stream (${events(f.stream.messages).length} events)`);
    const all = assertExactlyOnceInOrder(f.stream.messages);
    const rows = rowsOf(all);
    for (let i = 1; i <= 200; i++) assert.ok(rows.has(i), `row ${i} is in the stream`);
    assert.ok(!rows.has(1000), 'the oversized event was skipped');
    await daemon.waitForLog((l) => /larger than the stream's frame size/.test(String(l.msg)), 5_000);
  });
});

describe('stream sink: refused login', () => {
  test('wrong stream credentials end the daemon with exit 3 and the fix, not a crash', async (t) => {
    const f = await fixture('streamauth');
    t.after(() => f.cleanup());
    const daemon = await start({ ...f.env, PGWARREN_STREAM_URL: streamUrl().replace('guest:guest@', 'guest:wrong@') });
    const exit = await daemon.exited;
    assert.equal(exit.code, 3, daemon.output().slice(-2000));
    assert.match(daemon.output(), /refused the credentials: .*Check the user and password in PGWARREN_STREAM_URL/);
    assert.doesNotMatch(daemon.output(), /guest:wrong@/, 'the password is not logged');
  });
});

describe('check', () => {
  test('verifies the stream port, with the fix when the plugin is off', async (t) => {
    const db = await createTestDatabase('streamchk');
    t.after(() => db.drop());
    const env = { PGWARREN_DATABASE_URL: db.url, PGWARREN_SLOT: uniqueName('chk'), PGWARREN_SINK: 'stream', PGWARREN_AMQP_URL: testEnv().amqpUrl };
    const good = await runCli(['check'], { ...env, PGWARREN_STREAM_URL: streamUrl() });
    assert.match(good.stdout, /ok +stream protocol: .* reachable, RabbitMQ \d+\.\d+/);
    // Nothing listens there: what a broker without the stream plugin looks like.
    const off = await runCli(['check'], { ...env, PGWARREN_STREAM_URL: streamUrl(await freePort()) });
    assert.equal(off.code, 3);
    assert.match(off.stdout, /FAIL +stream protocol: .*connection refused/);
    assert.match(off.stdout, /fix: Enable the stream plugin on the broker: "rabbitmq-plugins enable rabbitmq_stream"/);
  });
});
