import { test } from 'node:test';
import assert from 'node:assert/strict';
import { LogThrottle } from '../../src/ops/throttle.js';

test('first occurrence logs, repeats are counted and reported once per interval', () => {
  const t = new LogThrottle(1000);
  assert.equal(t.hit('a', 0), 1);
  assert.equal(t.hit('a', 10), 0);
  assert.equal(t.hit('a', 20), 0);
  assert.equal(t.hit('b', 30), 1, 'keys are independent');
  assert.equal(t.hit('a', 1500), 3, 'three since the last report');
  assert.equal(t.hit('a', 1600), 0);
});
