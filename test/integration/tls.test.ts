/**
 * TLS on both sides, on loopback with a CA the test makes: Postgres with sslmode verify-full
 * against a private cluster running ssl=on, RabbitMQ over amqps:// through a TLS-terminating
 * proxy that also demands a client certificate. A certificate that does not verify (wrong CA,
 * wrong host name, no client certificate) is a prerequisite failure: exit 3 with a clear message.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import pg from 'pg';
import { createTestDatabase } from '../support/pg.js';
import { createTestBroker, type TestBroker } from '../support/amqp.js';
import { runCli, start } from '../support/daemon.js';
import { testEnv, uniqueName } from '../support/env.js';
import { createTestPki, startTlsCluster, startTlsProxy, type TestPki, type TlsCluster, type TlsProxy } from '../support/tls.js';

describe('TLS', () => {
  let pki: TestPki;
  let cluster: TlsCluster;
  let broker: TestBroker;
  let proxy: TlsProxy;
  const dbName = uniqueName('tls');
  const tlsUrl = (host: string, params: string) => `postgres://postgres@${host}:${cluster.port}/${dbName}?${params}`;
  const brokerTarget = () => {
    const u = new URL(testEnv().amqpUrl);
    return { host: u.hostname, port: Number(u.port || 5672) };
  };
  const amqpsUrl = (port: number) => {
    const u = new URL(testEnv().amqpUrl);
    return `amqps://${u.username}:${u.password}@localhost:${port}${u.pathname}`;
  };

  before(async () => {
    pki = createTestPki();
    cluster = await startTlsCluster(pki);
    const admin = new pg.Client({ connectionString: cluster.url });
    await admin.connect();
    await admin.query(`CREATE DATABASE ${dbName}`);
    await admin.end();
    const db = new pg.Client({ connectionString: cluster.url.replace(/\/postgres$/, `/${dbName}`) });
    await db.connect();
    await db.query('CREATE TABLE orders (id int PRIMARY KEY, note text)');
    await db.end();
    broker = await createTestBroker('tls');
    await broker.declareExchange(broker.exchange);
    proxy = await startTlsProxy(pki, brokerTarget(), { requireClientCert: true });
  });
  after(async () => {
    await proxy?.close();
    await broker?.cleanup();
    cluster?.stop(); // the cluster takes its database and slots along
    pki?.cleanup();
  });

  test('verify-full with the right CA, and amqps:// with a client certificate: an event end to end', async (t) => {
    const queue = await broker.bindQueue('#');
    const slot = uniqueName('tls_ok');
    const daemon = await start({
      PGWARREN_DATABASE_URL: tlsUrl('localhost', 'sslmode=verify-full'),
      PGWARREN_PG_SSL_ROOT_CERT: pki.caCert,
      PGWARREN_AMQP_URL: amqpsUrl(proxy.port),
      PGWARREN_AMQP_CA: pki.caCert,
      PGWARREN_AMQP_CERT: pki.clientCert,
      PGWARREN_AMQP_KEY: pki.clientKey,
      PGWARREN_SLOT: slot,
      PGWARREN_PUBLICATION: slot,
      PGWARREN_EXCHANGE: broker.exchange,
    });
    t.after(() => daemon.stop());
    await daemon.waitReady(30_000);

    const db = new pg.Client({ connectionString: cluster.url.replace(/\/postgres$/, `/${dbName}`) });
    await db.connect();
    t.after(() => db.end());
    await db.query("INSERT INTO orders VALUES (1, 'over tls')");
    await queue.waitForCount(1, 20_000);
    assert.deepEqual(queue.messages[0]!.body.new, { id: 1, note: 'over tls' });

    // Every connection the daemon holds to Postgres is encrypted, the replication one included.
    const { rows } = await db.query<{ application_name: string; ssl: boolean }>(
      `SELECT a.application_name, s.ssl FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
        WHERE a.application_name LIKE 'pgwarren%' ORDER BY 1`,
    );
    assert.ok(rows.some((r) => r.application_name === 'pgwarren'), `the replication connection is listed: ${JSON.stringify(rows)}`);
    assert.ok(rows.every((r) => r.ssl), `all encrypted: ${JSON.stringify(rows)}`);
    assert.ok(proxy.handshakes() >= 1, 'the broker was reached through the TLS proxy');
    assert.deepEqual(proxy.handshakeErrors, []);
    assert.ok(daemon.logs.some((l) => /connected to broker amqps:/.test(String(l.msg)) && l.tls === true), 'the broker connection is logged as TLS');
    assert.equal(await daemon.stop(), 0);
  });

  test('a server certificate from another CA: exit 3, naming the CA setting', async () => {
    const slot = uniqueName('tls_ca');
    const daemon = await start({
      PGWARREN_DATABASE_URL: tlsUrl('localhost', 'sslmode=verify-full'),
      PGWARREN_PG_SSL_ROOT_CERT: pki.otherCaCert,
      PGWARREN_SLOT: slot,
      PGWARREN_EXCHANGE: broker.exchange,
    });
    const exit = await daemon.exited;
    assert.equal(exit.code, 3, daemon.output());
    assert.match(daemon.output(), /TLS certificate does not verify against the trusted CA .*PGWARREN_PG_SSL_ROOT_CERT/);
    assert.ok(!/\n\s+at /.test(daemon.output()), 'no stack trace');
  });

  test('verify-full to a host name the certificate does not name: exit 3; verify-ca accepts it', async (t) => {
    const slot = uniqueName('tls_host');
    const wrongHost = await start({
      PGWARREN_DATABASE_URL: tlsUrl('127.0.0.1', 'sslmode=verify-full'),
      PGWARREN_PG_SSL_ROOT_CERT: pki.caCert,
      PGWARREN_SLOT: slot,
      PGWARREN_EXCHANGE: broker.exchange,
    });
    const exit = await wrongHost.exited;
    assert.equal(exit.code, 3, wrongHost.output());
    assert.match(wrongHost.output(), /not valid for the host name.*127\.0\.0\.1/);

    // verify-ca checks the chain only, as in libpq.
    const caOnly = await start({
      PGWARREN_DATABASE_URL: tlsUrl('127.0.0.1', `sslmode=verify-ca&sslrootcert=${encodeURIComponent(pki.caCert)}`),
      PGWARREN_AMQP_URL: testEnv().amqpUrl,
      PGWARREN_SLOT: slot,
      PGWARREN_PUBLICATION: slot,
      PGWARREN_EXCHANGE: broker.exchange,
    });
    t.after(() => caOnly.stop());
    await caOnly.waitReady(30_000);
    assert.equal(await caOnly.stop(), 0);
  });

  test('amqps:// with the wrong CA, or without the client certificate the broker demands: exit 3', async (t) => {
    const db = await createTestDatabase('tls_amqp');
    t.after(() => db.drop());
    const base = { PGWARREN_DATABASE_URL: db.url, PGWARREN_EXCHANGE: broker.exchange, PGWARREN_AMQP_URL: amqpsUrl(proxy.port) };

    const wrongCa = await start({ ...base, PGWARREN_SLOT: uniqueName('tls_a1'), PGWARREN_AMQP_CA: pki.otherCaCert, PGWARREN_AMQP_CERT: pki.clientCert, PGWARREN_AMQP_KEY: pki.clientKey });
    assert.equal((await wrongCa.exited).code, 3, wrongCa.output());
    assert.match(wrongCa.output(), /broker amqps:\/\/guest:\*\*\*@localhost:\d+.*does not verify against the trusted CA.*PGWARREN_AMQP_CA/);

    const noClientCert = await start({ ...base, PGWARREN_SLOT: uniqueName('tls_a2'), PGWARREN_AMQP_CA: pki.caCert });
    const exit = await noClientCert.exited;
    assert.equal(exit.code, 3, noClientCert.output());
    assert.match(noClientCert.output(), /client certificate.*PGWARREN_AMQP_CERT/);
    assert.ok(proxy.handshakeErrors.length >= 1, 'the proxy turned the handshake down');
  });

  test('check reaches an amqps:// broker with a private CA and a client certificate exactly as run does', async (t) => {
    const db = await createTestDatabase('tls_check');
    t.after(() => db.drop());
    const base = { PGWARREN_DATABASE_URL: db.url, PGWARREN_EXCHANGE: broker.exchange, PGWARREN_AMQP_URL: amqpsUrl(proxy.port), PGWARREN_SLOT: uniqueName('tls_c') };
    const brokerCheck = (stdout: string) => {
      const checks = (JSON.parse(stdout) as { checks: { name: string; ok: boolean; detail: string; fix?: string }[] }).checks;
      return { broker: checks.find((c) => c.name === 'broker'), exchange: checks.find((c) => c.name === `exchange ${broker.exchange}`) };
    };

    const handshakesBefore = proxy.handshakeErrors.length;
    const good = await runCli(['check', '--json'], { ...base, PGWARREN_AMQP_CA: pki.caCert, PGWARREN_AMQP_CERT: pki.clientCert, PGWARREN_AMQP_KEY: pki.clientKey });
    const ok = brokerCheck(good.stdout);
    assert.equal(ok.broker?.ok, true, good.stdout + good.stderr);
    assert.match(ok.broker!.detail, /amqps:\/\/guest:\*\*\*@localhost:\d+.* reachable/);
    assert.equal(ok.exchange?.ok, true, 'the exchange was checked over the TLS connection');
    assert.equal(proxy.handshakeErrors.length, handshakesBefore, 'the proxy accepted the client certificate');

    const wrongCa = await runCli(['check', '--json'], { ...base, PGWARREN_AMQP_CA: pki.otherCaCert, PGWARREN_AMQP_CERT: pki.clientCert, PGWARREN_AMQP_KEY: pki.clientKey });
    assert.equal(wrongCa.code, 3);
    const bad = brokerCheck(wrongCa.stdout).broker;
    assert.equal(bad?.ok, false);
    assert.match(bad!.detail, /does not verify against the trusted CA.*PGWARREN_AMQP_CA/);
    assert.ok(!wrongCa.stdout.includes(`:${new URL(testEnv().amqpUrl).password}@`), 'no password in the output');
  });
});
