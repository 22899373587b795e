import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Checkpoint } from '../../src/pipeline/checkpoint.js';

test('a transaction is safe only after its commit is read and every message confirmed', () => {
  const cp = new Checkpoint(100n);
  const tx = cp.begin(200n);
  cp.published(tx, 2);
  cp.confirmed(tx);
  assert.equal(cp.safeLsn(), 100n);
  cp.committed(tx, 250n);
  assert.equal(cp.safeLsn(), 100n, 'one message still unconfirmed');
  cp.confirmed(tx);
  assert.equal(cp.safeLsn(), 250n);
  assert.equal(cp.outstanding(), 0);
  assert.equal(cp.openTransactions(), 0);
});

test('a confirmed later transaction never moves the position past an unconfirmed earlier one', () => {
  const cp = new Checkpoint();
  const a = cp.begin(10n);
  cp.published(a);
  cp.committed(a, 20n);
  const b = cp.begin(30n);
  cp.published(b);
  cp.committed(b, 40n);
  cp.confirmed(b);
  assert.equal(cp.safeLsn(), 0n);
  cp.confirmed(a);
  assert.equal(cp.safeLsn(), 40n, 'both settle once the earlier one does');
});

test('transactions without messages settle at commit, in order', () => {
  const cp = new Checkpoint();
  const a = cp.begin(10n);
  cp.published(a);
  cp.committed(a, 20n);
  const empty = cp.begin(30n);
  cp.committed(empty, 40n);
  assert.equal(cp.safeLsn(), 0n, 'an empty transaction behind an unconfirmed one waits');
  cp.confirmed(a);
  assert.equal(cp.safeLsn(), 40n);
});

test('keepalive positions count only when nothing is open', () => {
  const cp = new Checkpoint(5n);
  assert.equal(cp.idle(50n), true);
  assert.equal(cp.safeLsn(), 50n);
  const tx = cp.begin(60n);
  assert.equal(cp.idle(70n), false, 'a transaction being read is open');
  cp.committed(tx, 65n);
  assert.equal(cp.safeLsn(), 65n);
  assert.equal(cp.idle(40n), true);
  assert.equal(cp.safeLsn(), 65n, 'never moves backwards');
});

test('more confirms than messages is a bug, not silently absorbed', () => {
  const cp = new Checkpoint();
  const tx = cp.begin(1n);
  assert.throws(() => cp.confirmed(tx));
});

test('many settled transactions are compacted without losing order', () => {
  const cp = new Checkpoint();
  const held = cp.begin(1n);
  cp.published(held);
  cp.committed(held, 2n);
  const entries = [];
  for (let i = 0; i < 5000; i++) {
    const tx = cp.begin(BigInt(10 + i * 10));
    cp.published(tx);
    cp.committed(tx, BigInt(15 + i * 10));
    entries.push(tx);
  }
  for (const tx of entries) cp.confirmed(tx);
  assert.equal(cp.safeLsn(), 0n);
  cp.confirmed(held);
  assert.equal(cp.safeLsn(), BigInt(15 + 4999 * 10));
  assert.equal(cp.openTransactions(), 0);
  const next = cp.begin(100000n);
  cp.committed(next, 100001n);
  assert.equal(cp.safeLsn(), 100001n);
});
