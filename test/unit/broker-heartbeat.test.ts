/**
 * PGWARREN_BROKER_HEARTBEAT (README "Failure handling"): one setting for how quickly a silent
 * broker is noticed, from the option to the AMQP URL's heartbeat, the stream client's heartbeat
 * and the stream sink's confirm stall bound.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ConfigError, loadConfig } from '../../src/config/load.js';
import { sessionSettings } from '../../src/commands/settings.js';
import { CONFIRM_STALL_HEARTBEATS, confirmStallMs, withHeartbeat } from '../../src/sink/heartbeat.js';

const load = (env: Record<string, string> = {}, flags: Record<string, unknown> = {}) => loadConfig({ flags, env });

test('default 10 s: AMQP heartbeat=10 and a 30 s confirm stall, as before the option existed', () => {
  const c = load();
  assert.equal(c.brokerHeartbeat, 10);
  assert.equal(withHeartbeat('amqp://guest:guest@localhost:5672', c.brokerHeartbeat), 'amqp://guest:guest@localhost:5672?heartbeat=10');
  assert.equal(confirmStallMs(c.brokerHeartbeat), 30_000);
});

test('the stall bound is 3 heartbeats, whatever the heartbeat', () => {
  assert.equal(CONFIRM_STALL_HEARTBEATS, 3);
  for (const s of [1, 2, 7, 60]) assert.equal(confirmStallMs(s), 3 * s * 1000, `${s} s`);
});

test('the heartbeat is added to the AMQP URL, after any query it has; one the URL names wins', () => {
  assert.equal(withHeartbeat('amqp://h/vhost', 2), 'amqp://h/vhost?heartbeat=2');
  assert.equal(withHeartbeat('amqps://h?frameMax=8192', 2), 'amqps://h?frameMax=8192&heartbeat=2');
  assert.equal(withHeartbeat('amqp://h?heartbeat=30', 2), 'amqp://h?heartbeat=30');
  assert.equal(withHeartbeat('amqp://h?frameMax=8192&heartbeat=0', 2), 'amqp://h?frameMax=8192&heartbeat=0');
});

test('set by env or flag, reaches the session settings the sinks are opened with', () => {
  const fromEnv = load({ PGWARREN_BROKER_HEARTBEAT: '2' });
  assert.equal(fromEnv.brokerHeartbeat, 2);
  assert.equal(sessionSettings(fromEnv).brokerHeartbeatSeconds, 2);
  assert.equal(load({ PGWARREN_BROKER_HEARTBEAT: '2' }, { brokerHeartbeat: '5' }).brokerHeartbeat, 5);
  assert.equal(sessionSettings(load()).brokerHeartbeatSeconds, 10);
});

test('a whole number of seconds from 1: no heartbeat at all would never notice a silent broker', () => {
  for (const bad of ['0', '1.5', '-1', 'often', '65536']) {
    assert.throws(
      () => load({ PGWARREN_BROKER_HEARTBEAT: bad }),
      (err: unknown) => err instanceof ConfigError && err.problems.length === 1 && /^PGWARREN_BROKER_HEARTBEAT \(--broker-heartbeat\): ".*" is not a whole number/.test(err.problems[0]!),
      bad,
    );
  }
});
