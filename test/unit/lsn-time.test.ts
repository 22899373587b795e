import { test } from 'node:test';
import assert from 'node:assert/strict';
import { formatLsn, parseLsn } from '../../src/source/lsn.js';
import { pgMicrosToIso } from '../../src/source/time.js';

test('both textual LSN forms parse to the same number and format the Postgres way', () => {
  assert.equal(parseLsn('0/1535040'), 0x1535040n);
  assert.equal(parseLsn('00000000/01535040'), 0x1535040n);
  assert.equal(parseLsn('1A/FFFFFFFF'), (0x1an << 32n) | 0xffffffffn);
  assert.equal(formatLsn(0x1a2b3c4n), '0/1A2B3C4');
  assert.equal(formatLsn((0x1an << 32n) | 0xabn), '1A/AB');
  assert.equal(formatLsn(0n), '0/0');
  assert.throws(() => parseLsn('nope'), /not an LSN/);
});

test('commit times keep microseconds and are UTC', () => {
  // 2026-11-22T09:23:15.561510Z in microseconds since 2000-01-01
  const unixMicros = BigInt(Date.UTC(2026, 10, 22, 9, 23, 15)) * 1000n + 561510n;
  const pgMicros = unixMicros - 946_684_800_000_000n;
  assert.equal(pgMicrosToIso(pgMicros), '2026-11-22T09:23:15.561510Z');
  assert.equal(pgMicrosToIso(0n), '2000-01-01T00:00:00.000000Z');
  assert.equal(pgMicrosToIso(-946_684_800_000_001n), '1969-12-31T23:59:59.999999Z');
});
