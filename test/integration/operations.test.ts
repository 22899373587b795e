// test-runner: long ~45 s (stall watch, lag warning, role and password checks, one after another)
/**
 * Operations (README "Health and metrics", "Configuration", "Commands"): readiness and metrics through real outages, a stalled
 * replication stream, failover across a list of broker URLs, passwords kept out of every output,
 * and the daemon running as a role with REPLICATION and SELECT only.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { slotInfo, type TestDatabase } from '../support/pg.js';
import { type TestBroker } from '../support/amqp.js';
import { startProxy } from '../support/proxy.js';
import { freePort, runCli, start, type Daemon } from '../support/daemon.js';
import { testEnv, uniqueName } from '../support/env.js';
import { sleep, waitUntil } from '../support/wait.js';
import { scene, type After } from '../support/scene.js';
import { parseLsn } from '../../src/source/lsn.js';


interface Fixture {
  db: TestDatabase;
  broker: TestBroker;
  slot: string;
  env: Record<string, string>;
}

async function fixture(t: After, prefix: string, extraEnv: Record<string, string> = {}): Promise<Fixture> {
  return scene(t, prefix, { schema: 'CREATE TABLE orders (id int PRIMARY KEY, status text NOT NULL)', env: extraEnv });
}

/** A fault proxy in front of the broker and the AMQP URL through it. */
async function brokerProxy(t: After) {
  const target = new URL(testEnv().amqpUrl);
  const proxy = await startProxy({ host: target.hostname, port: Number(target.port || 5672) });
  t.after(() => proxy.close());
  target.host = `127.0.0.1:${proxy.port}`;
  return { proxy, url: target.toString() };
}

const readyz = async (d: Daemon) => {
  const r = await fetch(`http://127.0.0.1:${d.httpPort}/readyz`);
  return { status: r.status, body: await r.text() };
};

/** Prometheus text -> `name{labels}` -> value (labels as printed). */
async function metrics(d: Daemon): Promise<Map<string, number>> {
  const text = await (await fetch(`http://127.0.0.1:${d.httpPort}/metrics`)).text();
  const out = new Map<string, number>();
  for (const line of text.split('\n')) {
    const m = /^([a-z_:]+(?:\{[^}]*\})?) (\S+)$/.exec(line);
    if (m) out.set(m[1]!, Number(m[2]));
  }
  return out;
}

const ids = (d: { bodies(): any[] }) => new Set(d.bodies().map((b) => b.new?.id ?? b.old?.id));

test('/readyz while a new session connects says so, with the attempt and the last failure (not the stale failure alone)', async (t) => {
  const f = await fixture(t, 'connecting', { PGWARREN_STATUS_INTERVAL: '1', PGWARREN_RECONNECT_MAX_DELAY: '1', PGWARREN_CONNECT_TIMEOUT: '5' });
  const { proxy, url } = await brokerProxy(t);
  proxy.refuse();
  const daemon = await start({ ...f.env, PGWARREN_AMQP_URL: url });
  t.after(() => daemon.stop());
  await daemon.waitForLog('session ended', 30_000);
  // The next attempts reach a broker that holds the handshake: each stays connecting for the
  // connect timeout, long enough to be seen.
  proxy.accept();
  proxy.stall();
  let body = '';
  await waitUntil(
    async () => {
      body = (await readyz(daemon)).body;
      return /^not ready: connecting \(attempt \d+; last failure: .*broker/.test(body);
    },
    { timeoutMs: 20_000, message: () => `/readyz said: ${body}` },
  );
  proxy.resume();
  await daemon.waitReady(30_000);
  assert.match((await readyz(daemon)).body, /^ready: streaming/);
});

test('endpoints: /readyz 503 while the broker is unreachable, 200 once it is back; metrics match the workload', async (t) => {
  const f = await fixture(t, 'endpoints', { PGWARREN_STATUS_INTERVAL: '1', PGWARREN_RECONNECT_MAX_DELAY: '1' });
  const queue = await f.broker.bindQueue('#');
  const { proxy, url } = await brokerProxy(t);
  proxy.refuse();
  const daemon = await start({ ...f.env, PGWARREN_AMQP_URL: url });
  t.after(() => daemon.stop());

  await daemon.waitForLog('session ended', 30_000);
  assert.equal((await fetch(`http://127.0.0.1:${daemon.httpPort}/healthz`)).status, 200, 'healthy while not ready');
  const down = await readyz(daemon);
  assert.equal(down.status, 503);
  // Between two attempts, or in the next one: either way the reason names the broker's failure.
  assert.match(down.body, /not ready: (waiting to reconnect: |connecting \(attempt \d+; last failure: ).*broker/);
  assert.equal((await metrics(daemon)).get('pgwarren_streaming'), 0);

  proxy.accept();
  await daemon.waitReady(30_000);
  assert.match((await readyz(daemon)).body, /^ready: streaming/);
  const before = await metrics(daemon);
  assert.ok((before.get('pgwarren_reconnects_total{target="rabbitmq"}') ?? 0) >= 1, 'the broker outage was counted');
  const lsnBefore = before.get('pgwarren_confirmed_lsn') ?? 0;

  // A known workload: 5 transactions of 10 inserts, then 7 updates and 3 deletes.
  for (let tx = 0; tx < 5; tx++) await f.db.query("INSERT INTO orders SELECT g, 'new' FROM generate_series($1::int, $1::int + 9) g", [tx * 10 + 1]);
  await f.db.query("UPDATE orders SET status = 'paid' WHERE id <= 7");
  await f.db.query('DELETE FROM orders WHERE id > 47');
  await queue.waitForCount(60, 20_000);
  const lastCommit = Number(parseLsn(queue.bodies().at(-1)!.tx.lsn));

  let m = new Map<string, number>();
  await waitUntil(
    async () => {
      m = await metrics(daemon);
      return (m.get('pgwarren_confirmed_lsn') ?? 0) > lastCommit && m.get('pgwarren_inflight_messages') === 0;
    },
    { timeoutMs: 15_000, message: () => `confirmed_lsn ${m.get('pgwarren_confirmed_lsn')} past ${lastCommit}, inflight ${m.get('pgwarren_inflight_messages')}` },
  );
  assert.equal(m.get('pgwarren_events_published_total{table="public.orders",op="insert"}'), 50);
  assert.equal(m.get('pgwarren_events_published_total{table="public.orders",op="update"}'), 7);
  assert.equal(m.get('pgwarren_events_published_total{table="public.orders",op="delete"}'), 3);
  assert.ok(m.get('pgwarren_confirmed_lsn')! > lsnBefore, 'the acknowledged LSN gauge advanced');
  assert.equal(m.get('pgwarren_streaming'), 1);
  assert.equal(m.get('pgwarren_unroutable_total'), 0);
  assert.equal(m.get('pgwarren_commit_to_confirm_seconds_count'), 7, 'one observation per transaction');
  assert.ok(m.has('pgwarren_slot_lag_bytes'));
  assert.equal(queue.messages.length, 60, 'nothing doubled');
  // The slot really is where the gauge says.
  const slot = await slotInfo(f.db.name, f.slot);
  assert.ok(Number(parseLsn(slot!.confirmedFlushLsn!)) >= lastCommit);
  assert.equal(await daemon.stop(), 0);
  const stopped = daemon.logs.find((l) => l.msg === 'stopped');
  assert.equal(stopped?.published, 60, 'the stop line carries the count');
  assert.equal(stopped?.slot, f.slot);
});

test('slot lag above PGWARREN_LAG_WARN_BYTES: one warning line and the gauge at 1, cleared once streaming catches up', async (t) => {
  const f = await fixture(t, 'lagwarn', { PGWARREN_STATUS_INTERVAL: '1', PGWARREN_RECONNECT_MAX_DELAY: '1', PGWARREN_LAG_WARN_BYTES: '65536' });
  const queue = await f.broker.bindQueue('#');
  const { proxy, url } = await brokerProxy(t);
  proxy.refuse();
  const daemon = await start({ ...f.env, PGWARREN_AMQP_URL: url });
  t.after(() => daemon.stop());
  await daemon.waitForLog('session ended', 30_000);
  await waitUntil(async () => (await slotInfo(f.db.name, f.slot)) != null, { timeoutMs: 15_000, message: 'the slot exists' });

  // About 300 kB of WAL the daemon cannot forward while the broker is away.
  await f.db.query("INSERT INTO orders SELECT g, repeat('x', 200) FROM generate_series(1, 1000) g");
  const warning = await daemon.waitForLog((l) => /slot lag is above PGWARREN_LAG_WARN_BYTES/.test(String(l.msg)), 20_000);
  assert.ok(Number(warning.lagBytes) > 65_536);
  assert.equal(warning.slot, f.slot);
  assert.equal((await metrics(daemon)).get('pgwarren_slot_lag_warning'), 1);
  await sleep(2_500);
  assert.equal(daemon.logs.filter((l) => /slot lag is above/.test(String(l.msg))).length, 1, 'warned once, not on every poll');

  proxy.accept();
  await queue.waitForCount(1000, 30_000);
  await daemon.waitForLog((l) => /slot lag back under/.test(String(l.msg)), 30_000);
  assert.equal((await metrics(daemon)).get('pgwarren_slot_lag_warning'), 0);
  assert.equal(await daemon.stop(), 0);
});

test('a stalled replication stream: /readyz 503 while Postgres is silent, 200 when it speaks; a long stall reconnects, nothing lost', async (t) => {
  const f = await fixture(t, 'stall', { PGWARREN_STATUS_INTERVAL: '1', PGWARREN_RECONNECT_MAX_DELAY: '1' });
  const queue = await f.broker.bindQueue('#');
  const target = new URL(testEnv().pgUrl);
  const proxy = await startProxy({ host: target.hostname, port: Number(target.port) });
  t.after(() => proxy.close());
  const viaProxy = new URL(f.db.url);
  viaProxy.host = `127.0.0.1:${proxy.port}`;
  const daemon = await start({ ...f.env, PGWARREN_DATABASE_URL: viaProxy.toString() });
  t.after(() => daemon.stop());
  await daemon.waitReady(30_000);
  await f.db.query("INSERT INTO orders VALUES (1, 'before')");
  await queue.waitForCount(1, 20_000);

  // Idle is not stalled: with nothing to send, Postgres still answers the daemon's pings.
  await sleep(5_000);
  assert.equal((await readyz(daemon)).status, 200, 'an idle but healthy stream stays ready');

  proxy.stall();
  await f.db.query("INSERT INTO orders VALUES (2, 'during a short stall')");
  await waitUntil(async () => (await readyz(daemon)).status === 503, { timeoutMs: 10_000, message: 'readyz drops while the stream is silent' });
  // Silence is counted from the last thing heard, which may be a ping reply from just before the
  // stall began: measure from the last byte the proxy passed to the daemon's replication
  // connection, not from stall().
  assert.ok(proxy.lastToReplicationClientAt() > 0, 'the proxy carries the replication connection');
  const silentMs = Date.now() - proxy.lastToReplicationClientAt();
  assert.ok(silentMs >= 3_000, `not before 3 status intervals of silence (silent for ${silentMs} ms)`);
  assert.match((await readyz(daemon)).body, /replication stream from Postgres has stalled/);
  assert.ok(daemon.logs.some((l) => /replication stream stalled/.test(String(l.msg)) && l.slot === f.slot));
  proxy.resume();
  await daemon.waitReady(10_000);
  await queue.waitForCount(2, 20_000);
  assert.ok(daemon.logs.some((l) => /responsive again/.test(String(l.msg))));
  assert.ok(!daemon.logs.some((l) => /session ended/.test(String(l.msg))), 'a short stall does not reconnect');

  // Silent for longer than 6 intervals: the session is ended and started again.
  proxy.stall();
  await f.db.query("INSERT INTO orders VALUES (3, 'during a long stall')");
  const ended = await daemon.waitForLog((l) => /session ended: nothing heard from Postgres/.test(String(l.msg)), 20_000);
  assert.equal(ended.target, 'postgres');
  assert.match(String(ended.msg), /reconnecting in [\d.]+ s/);
  proxy.resume();
  await daemon.waitReady(30_000);
  await f.db.query("INSERT INTO orders VALUES (4, 'after')");
  await waitUntil(() => ids(queue).size === 4, { timeoutMs: 30_000, message: () => `rows ${[...ids(queue)]}` });
});

test('a list of broker URLs: when the first is lost the daemon moves to the next, resuming from the slot with nothing missing', async (t) => {
  const f = await fixture(t, 'failover', { PGWARREN_RECONNECT_MAX_DELAY: '1' });
  const queue = await f.broker.bindQueue('#');
  const first = await brokerProxy(t);
  const second = await brokerProxy(t);
  const daemon = await start({ ...f.env, PGWARREN_AMQP_URL: `${first.url},${second.url}` });
  t.after(() => daemon.stop());
  await daemon.waitReady(30_000);
  assert.equal(daemon.logs.find((l) => /connected to broker/.test(String(l.msg)))?.brokerIndex, 0);

  const total = 300;
  let next = 1;
  const writer = (async () => {
    for (; next <= total; next++) {
      await f.db.query("INSERT INTO orders VALUES ($1, 'x')", [next]);
      if (next % 10 === 0) await sleep(20);
    }
  })();
  await waitUntil(() => ids(queue).size >= 100, { timeoutMs: 30_000 });
  first.proxy.refuse(); // the first node is gone for good
  first.proxy.cut();
  await writer;
  await waitUntil(() => ids(queue).size >= total, { timeoutMs: 60_000, message: () => `${ids(queue).size} of ${total} arrived` });
  for (let i = 1; i <= total; i++) assert.ok(ids(queue).has(i), `row ${i} arrived`);
  await daemon.waitReady(30_000);
  const connects = daemon.logs.filter((l) => /connected to broker/.test(String(l.msg)));
  assert.equal(connects.at(-1)?.brokerIndex, 1, 'now on the second URL');
  assert.equal(first.proxy.connections(), 0);
  assert.ok(second.proxy.connections() >= 1);
  const ended = daemon.logs.find((l) => /session ended/.test(String(l.msg)));
  assert.equal(ended?.target, 'rabbitmq');
  assert.match(String(ended?.msg), /reconnecting in [\d.]+ s/);
  // Redeliveries, if any, repeat the first delivery byte for byte.
  const byId = new Map<string, string>();
  for (const msg of queue.messages) {
    const prior = byId.get(msg.properties.messageId);
    if (prior !== undefined) assert.equal(msg.content.toString(), prior);
    byId.set(msg.properties.messageId, msg.content.toString());
  }
});

test('passwords never appear in any output: running, a failing check, a configuration error', async (t) => {
  const f = await fixture(t, 'redact');
  const role = await f.db.daemonRole();
  const amqpSecret = `amqp-secret-${uniqueName('x').slice(-8)}`;
  const dead = await freePort();
  const real = new URL(testEnv().amqpUrl);
  const setup = await runCli(['setup'], f.env);
  assert.equal(setup.code, 0, setup.stderr);
  const outputs: Array<[string, string]> = [];

  // 1. The daemon, as a role with a password, with a first broker URL that refuses connections.
  const daemon = await start({
    ...f.env,
    PGWARREN_DATABASE_URL: role.url,
    PGWARREN_AMQP_URL: `amqp://guest:${amqpSecret}@127.0.0.1:${dead}/,${real.toString()}`,
    PGWARREN_LOG_LEVEL: 'trace',
  });
  t.after(() => daemon.stop());
  const queue = await f.broker.bindQueue('#');
  await daemon.waitReady(30_000);
  await f.db.query("INSERT INTO orders VALUES (1, 'x')");
  await queue.waitForCount(1, 20_000);
  assert.equal(await daemon.stop(), 0);
  assert.ok(daemon.logs.some((l) => /broker connection failed/.test(String(l.msg))), 'the refusing URL was tried and logged');
  outputs.push(['run', daemon.output()]);

  // 2. A check that fails on both sides, and one where the broker refuses the password.
  const check = await runCli(['check'], {
    PGWARREN_DATABASE_URL: `postgres://${role.name}:${role.password}@127.0.0.1:${dead}/${f.db.name}`,
    PGWARREN_AMQP_URL: `amqp://guest:${amqpSecret}@127.0.0.1:${dead}`,
  });
  assert.equal(check.code, 3, check.stdout + check.stderr);
  outputs.push(['check', check.stdout + check.stderr]);
  const refused = new URL(real.toString());
  refused.password = amqpSecret;
  const refusedRun = await start({ ...f.env, PGWARREN_DATABASE_URL: role.url, PGWARREN_AMQP_URL: refused.toString() });
  assert.equal((await refusedRun.exited).code, 3, refusedRun.output());
  assert.match(refusedRun.output(), /refused access \(ACCESS_REFUSED/);
  outputs.push(['run with refused credentials', refusedRun.output()]);

  // 3. Configuration errors: exit 2, the bad URLs quoted without their passwords.
  const bad = await runCli(['run'], {
    PGWARREN_DATABASE_URL: `postgres://${role.name}:${role.password}@127.0.0.1:99999/${f.db.name}`,
    PGWARREN_AMQP_URL: `amqpx://guest:${amqpSecret}@127.0.0.1`,
    PGWARREN_FLOOD_ACTION: 'boom',
  });
  assert.equal(bad.code, 2, bad.stderr);
  assert.match(bad.stderr, /PGWARREN_AMQP_URL/);
  assert.match(bad.stderr, /99999/);
  outputs.push(['config error', bad.stdout + bad.stderr]);
  const badFile = await runCli(['check'], { DATABASE_URL: `postgres://${role.name}:${role.password}@127.0.0.1:1/x?sslmode=bogus`, AMQP_URL: `amqp://guest:${amqpSecret}@[::1` });
  assert.equal(badFile.code, 2, badFile.stderr);
  outputs.push(['config error (fallback variables)', badFile.stdout + badFile.stderr]);

  for (const [what, text] of outputs) {
    assert.ok(text.length > 0, `${what}: produced output`);
    assert.ok(!text.includes(role.password), `${what}: the database password leaked:\n${text}`);
    assert.ok(!text.includes(amqpSecret), `${what}: the broker password leaked:\n${text}`);
  }
});

test('runs as a role with REPLICATION and SELECT only, once the publication was set up by the owner', async (t) => {
  const f = await fixture(t, 'nosuper', { PGWARREN_STATUS_INTERVAL: '1', PGWARREN_HEARTBEAT_INTERVAL: '1', PGWARREN_PUBLICATION_SYNC_INTERVAL: '1' });
  const role = await f.db.daemonRole();
  const { rows } = await f.db.query('SELECT rolsuper, rolreplication FROM pg_roles WHERE rolname = $1', [role.name]);
  assert.deepEqual(rows[0], { rolsuper: false, rolreplication: true });
  const asRole = { ...f.env, PGWARREN_DATABASE_URL: role.url };

  // Without a publication the role cannot make one (it owns no table): exit 3 naming the fix.
  const early = await start(asRole);
  assert.equal((await early.exited).code, 3, early.output());
  assert.match(early.output(), /permission denied.*run \\"pgwarren setup\\" as the tables' owner/);

  // The owner (here the superuser) runs setup; then the role streams end to end.
  const setup = await runCli(['setup'], f.env);
  assert.equal(setup.code, 0, setup.stderr);
  const check = await runCli(['check'], { ...asRole, PGWARREN_EXCHANGE: f.broker.exchange });
  assert.equal(check.code, 0, check.stdout);
  const queue = await f.broker.bindQueue('#');
  const daemon = await start(asRole);
  t.after(() => daemon.stop());
  await daemon.waitReady(30_000);
  await f.db.query("INSERT INTO orders SELECT g, 'x' FROM generate_series(1, 20) g");
  await f.db.query("UPDATE orders SET status = 'y' WHERE id = 1");
  await queue.waitForCount(21, 20_000);
  const walsender = await f.db.query(
    "SELECT r.usename FROM pg_stat_replication r JOIN pg_replication_slots s ON s.active_pid = r.pid WHERE s.slot_name = $1 AND r.application_name = 'pgwarren'",
    [f.slot],
  );
  assert.deepEqual(walsender.rows, [{ usename: role.name }], 'the replication connection runs as the role');
  // Lag monitor and heartbeat work without superuser: the lag gauge is filled, no task failed.
  await waitUntil(async () => /pgwarren_slot_lag_bytes \d/.test(await (await fetch(`http://127.0.0.1:${daemon.httpPort}/metrics`)).text()), { timeoutMs: 15_000 });
  await sleep(2_500);
  const failures = daemon.logs.filter((l) => /failed/.test(String(l.msg)));
  assert.deepEqual(failures, [], 'no background task (heartbeat, lag monitor, publication sync) failed');

  // A table created later matches the selection, but only its owner can add it to the
  // publication: the role says so, with the fix, and keeps streaming the tables it has.
  await f.db.query('CREATE TABLE later (id int PRIMARY KEY)');
  const denied = await daemon.waitForLog('publication sync lacks a privilege', 15_000);
  assert.match(String(denied.msg), /must be owner of .*Run "pgwarren setup" as the tables' owner, or as the owner: ALTER PUBLICATION .* ADD TABLE .*later/);
  await f.db.query("INSERT INTO orders VALUES (21, 'still streaming')");
  await queue.waitForCount(22, 20_000);
  assert.equal((await readyz(daemon)).status, 200);

  // Defect 12.5: a reconnect in this state is a reconnect, never exit 3. Take the replication
  // connection away; the next session's publication sync meets the same refusal and streams on.
  // This daemon's walsender only: other test files' daemons share the cluster.
  await f.db.query('SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = $1 AND active_pid IS NOT NULL', [f.slot]);
  await daemon.waitForLog((l) => /session ended/.test(String(l.msg)), 20_000);
  await f.db.query("INSERT INTO orders VALUES (22, 'after the reconnect')");
  await waitUntil(() => ids(queue).has(22), { timeoutMs: 30_000, message: () => `rows ${[...ids(queue)]}; output:\n${daemon.output().slice(-3000)}` });
  assert.equal((await readyz(daemon)).status, 200);
  assert.equal(await daemon.stop(), 0);
});
