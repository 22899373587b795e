import { test } from 'node:test';
import assert from 'node:assert/strict';
import { closeWithin } from '../../src/ops/close.js';

test('a close the peer never answers: the socket is destroyed after the grace period', async () => {
  let destroyed = 0;
  const started = Date.now();
  await closeWithin(() => new Promise(() => undefined), () => ({ stream: { destroy: () => destroyed++ } }), 50);
  assert.equal(destroyed, 1);
  assert.ok(Date.now() - started >= 45);
});

test('a close that completes (or fails) leaves the socket alone', async () => {
  let destroyed = 0;
  const owner = () => ({ stream: { destroy: () => destroyed++ } });
  await closeWithin(() => Promise.resolve(), owner, 50);
  await closeWithin(() => Promise.reject(new Error('already closed')), owner, 50);
  assert.equal(destroyed, 0);
});
