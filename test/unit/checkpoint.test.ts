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

test('memory: a million transactions behind one outstanding confirm keep the checkpoint small', () => {
  const cp = new Checkpoint();
  const held = cp.begin(10n);
  cp.published(held);
  cp.committed(held, 20n);
  let end = 20n;
  for (let i = 0; i < 1_000_000; i++) {
    // Unrelated transactions (wal2json sends begin and commit for each): nothing published.
    const tx = cp.begin(end + 5n);
    end += 10n;
    cp.committed(tx, end);
    assert.ok(cp.openTransactions() <= 2, `open entries at transaction ${i}: ${cp.openTransactions()}`);
  }
  assert.equal(cp.safeLsn(), 0n, 'nothing passes the unconfirmed transaction');
  assert.equal(cp.idle(end + 100n), false);
  cp.confirmed(held);
  assert.equal(cp.safeLsn(), end, 'then everything behind it at once');
  assert.equal(cp.openTransactions(), 0);
});

test('memory: settled transactions between unsettled ones are coalesced (at most twice the unsettled)', () => {
  const cp = new Checkpoint();
  const held = [];
  let end = 0n;
  for (let i = 0; i < 1000; i++) {
    const tx = cp.begin(end + 5n);
    cp.published(tx);
    cp.committed(tx, (end += 10n));
    held.push(tx);
    for (let j = 0; j < 50; j++) cp.committed(cp.begin(end + 5n), (end += 10n));
  }
  assert.ok(cp.openTransactions() <= 2000, `${cp.openTransactions()} entries for 1000 unconfirmed transactions`);
  // Confirms out of order: the middle ones first, the first one last.
  for (const tx of held.slice(1).reverse()) cp.confirmed(tx);
  assert.equal(cp.safeLsn(), 0n);
  assert.ok(cp.openTransactions() <= 2);
  cp.confirmed(held[0]!);
  assert.equal(cp.safeLsn(), end);
  assert.equal(cp.openTransactions(), 0);
});

test('property: safeLsn, idle and the bound on entries match a naive model under random interleavings', () => {
  let state = 7;
  const rand = (n: number) => {
    state = (state + 0x6d2b79f5) | 0;
    let r = Math.imul(state ^ (state >>> 15), 1 | state);
    r = (r + Math.imul(r ^ (r >>> 7), 61 | r)) ^ r;
    return Math.floor((((r ^ (r >>> 14)) >>> 0) / 4294967296) * n);
  };
  for (let round = 0; round < 200; round++) {
    const start = BigInt(rand(3) * 5);
    const cp = new Checkpoint(start);
    // The model: every transaction ever begun, with its own counts; safe = the end of the last
    // one in the prefix whose commits were read and whose messages were all confirmed.
    const model: Array<{ entry: ReturnType<Checkpoint['begin']>; end: bigint | null; outstanding: number }> = [];
    let reading: (typeof model)[number] | null = null;
    let lsn = 100n;
    let idleSafe = start;
    const unconfirmed: Array<(typeof model)[number]> = [];
    for (let step = 0; step < 400; step++) {
      const action = rand(10);
      if (action < 3) {
        if (!reading) {
          reading = { entry: cp.begin((lsn += 10n)), end: null, outstanding: 0 };
          model.push(reading);
        } else {
          const n = rand(3);
          if (n > 0) {
            cp.published(reading.entry, n);
            reading.outstanding += n;
            for (let i = 0; i < n; i++) unconfirmed.push(reading);
          } else {
            reading.end = lsn + 5n;
            cp.committed(reading.entry, reading.end);
            reading = null;
          }
        }
      } else if (action < 8 && unconfirmed.length > 0) {
        const [tx] = unconfirmed.splice(rand(unconfirmed.length), 1);
        tx!.outstanding--;
        cp.confirmed(tx!.entry);
      } else if (action === 9) {
        const accepted = cp.idle(lsn + 1n);
        const allSettled = model.every((t) => t.end !== null && t.outstanding === 0);
        assert.equal(accepted, allSettled, `round ${round} step ${step}: idle`);
        if (accepted && lsn + 1n > idleSafe) idleSafe = lsn + 1n;
      }
      let safe = idleSafe;
      for (const t of model) {
        if (t.end === null || t.outstanding > 0) break;
        if (t.end > safe) safe = t.end;
      }
      assert.equal(cp.safeLsn(), safe, `round ${round} step ${step}: safeLsn`);
      assert.equal(cp.outstanding(), unconfirmed.length);
      const firstOpen = model.findIndex((t) => t.end === null || t.outstanding > 0);
      const unsettled = model.filter((t) => t.end === null || t.outstanding > 0).length;
      assert.ok(cp.openTransactions() <= 2 * unsettled, `round ${round} step ${step}: ${cp.openTransactions()} entries for ${unsettled} unsettled`);
      if (firstOpen < 0) assert.equal(cp.openTransactions(), 0);
    }
  }
});
