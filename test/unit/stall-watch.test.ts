import { test, mock } from 'node:test';
import assert from 'node:assert/strict';
import pino from 'pino';
import { StallWatch } from '../../src/pipeline/stall-watch.js';

function watch() {
  const events: string[] = [];
  const w = new StallWatch({
    intervalMs: 1000,
    log: pino({ level: 'silent' }),
    ping: () => events.push('ping'),
    onStalled: (s) => events.push(s ? 'stalled' : 'live'),
    onTimeout: (ms) => events.push(`timeout ${ms}`),
    confirmed: () => '0/0',
  });
  return { w, events };
}

test('silence while waiting on Postgres: a ping per interval, not ready after 3, timeout once after 6', (t) => {
  mock.timers.enable({ apis: ['Date'], now: 0 });
  t.after(() => mock.timers.reset());
  const { w, events } = watch();
  for (let s = 1; s <= 8; s++) {
    mock.timers.tick(1000);
    w.tick(true);
  }
  // Stalled once silence passes 3 s, timed out once it passes 6 s; nothing after the timeout.
  assert.deepEqual(events, ['ping', 'ping', 'ping', 'ping', 'stalled', 'ping', 'ping', 'ping', 'timeout 7000']);
});

test('heard from again: ready again; silence while busy handling does not count', (t) => {
  mock.timers.enable({ apis: ['Date'], now: 0 });
  t.after(() => mock.timers.reset());
  const { w, events } = watch();
  for (let s = 1; s <= 4; s++) {
    mock.timers.tick(1000);
    w.tick(true);
  }
  assert.equal(events.at(-1), 'stalled');
  w.heard();
  mock.timers.tick(500);
  w.tick(true);
  assert.equal(events.at(-1), 'live');
  // Ten seconds stuck handling what arrived (the broker is slow): never stalled.
  events.length = 0;
  for (let s = 1; s <= 10; s++) {
    mock.timers.tick(1000);
    w.tick(false);
  }
  assert.deepEqual(events, []);
  w.end();
  assert.deepEqual(events, [], 'end() reports nothing when not stalled');
});

const settle = () => new Promise((resolve) => setImmediate(resolve));

function probing(answer: () => Promise<'busy' | 'stalled'>) {
  const events: string[] = [];
  let probes = 0;
  const w = new StallWatch({
    intervalMs: 1000,
    log: pino({ level: 'silent' }),
    ping: () => events.push('ping'),
    probe: () => {
      probes++;
      return answer();
    },
    onStalled: (s) => events.push(s ? 'stalled' : 'live'),
    onTimeout: (ms) => events.push(`timeout ${ms}`),
    confirmed: () => '0/0',
  });
  return { w, events, probes: () => probes };
}

test('silence while the walsender is busy decoding is not a stall: never stalled, never timed out (defect 12.11)', async (t) => {
  mock.timers.enable({ apis: ['Date'], now: 0 });
  t.after(() => mock.timers.reset());
  const { w, events, probes } = probing(async () => 'busy');
  for (let s = 1; s <= 30; s++) {
    mock.timers.tick(1000);
    w.tick(true);
    await settle();
  }
  assert.ok(probes() > 0, 'asked');
  assert.ok(!events.includes('stalled') && !events.some((e) => e.startsWith('timeout')), events.join(','));
});

test('a probe that gets no answer, or finds the walsender idle, lets the silence count: stalled, then timed out', async (t) => {
  mock.timers.enable({ apis: ['Date'], now: 0 });
  t.after(() => mock.timers.reset());
  for (const answer of [async () => 'stalled' as const, () => Promise.reject(new Error('no answer'))]) {
    const { w, events } = probing(answer);
    for (let s = 1; s <= 8; s++) {
      mock.timers.tick(1000);
      w.tick(true);
      await settle();
    }
    assert.deepEqual(events.filter((e) => e !== 'ping'), ['stalled', 'timeout 7000']);
  }
});

test('a probe still in flight holds the timeout back until it answers', async (t) => {
  mock.timers.enable({ apis: ['Date'], now: 0 });
  t.after(() => mock.timers.reset());
  let answer!: (r: 'busy' | 'stalled') => void;
  const { w, events } = probing(() => new Promise((resolve) => (answer = resolve)));
  for (let s = 1; s <= 10; s++) {
    mock.timers.tick(1000);
    w.tick(true);
    await settle();
  }
  assert.ok(!events.some((e) => e.startsWith('timeout')), 'no timeout while the probe is out');
  answer('stalled');
  await settle();
  mock.timers.tick(1000);
  w.tick(true);
  assert.equal(events.at(-1), 'timeout 11000');
});
