/**
 * The one classification table (README "Failure handling"): every code it names, by code, never by text.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  AMQP_REPLY_CODES,
  ERRNOS,
  PrerequisiteError,
  SQLSTATES,
  SQLSTATE_CLASSES,
  TimeoutError,
  classify,
  classifyPgError,
  isPermanent,
} from '../../src/errors.js';
import { classifyConnectError } from '../../src/sink/amqp-sink.js';

const withCode = (code: string | number, message = 'some failure') => Object.assign(new Error(message), { code });

// What each code must mean, written out independently of the table.
const PERMANENT_SQLSTATES = ['28P01', '28000', '3D000', '42501', '42704', '55000', '58P01'];
const TRANSIENT_SQLSTATES = ['55006', '55P03', '57014', '57P01', '57P02', '57P03', '57P04', '40001', '40P01', '25006'];
const TRANSIENT_CLASSES = { '08': ['08000', '08001', '08003', '08006', '08P01'], '53': ['53000', '53100', '53200', '53300'], '57': ['57000'], '58': ['58000', '58030'], '40': ['40000', '40002'] };
const PERMANENT_AMQP = [403, 530, 406];
const TRANSIENT_AMQP = [320, 311, 312, 313, 404, 405, 501, 502, 503, 504, 505, 506, 540, 541];
const TRANSIENT_ERRNOS = ['ECONNREFUSED', 'ECONNRESET', 'ECONNABORTED', 'ETIMEDOUT', 'EPIPE', 'EHOSTUNREACH', 'EHOSTDOWN', 'ENETUNREACH', 'ENETDOWN', 'EADDRNOTAVAIL', 'ENOTFOUND', 'EAI_AGAIN'];

test('the table names exactly the codes this test expects, no more', () => {
  assert.deepEqual(Object.keys(SQLSTATES).sort(), [...PERMANENT_SQLSTATES, ...TRANSIENT_SQLSTATES].sort());
  assert.deepEqual(Object.keys(SQLSTATE_CLASSES).sort(), Object.keys(TRANSIENT_CLASSES).sort());
  assert.deepEqual(Object.keys(AMQP_REPLY_CODES).map(Number).sort(), [...PERMANENT_AMQP, ...TRANSIENT_AMQP].sort());
  assert.deepEqual(Object.keys(ERRNOS).sort(), [...TRANSIENT_ERRNOS].sort());
});

test('SQLSTATEs: credentials, pg_hba, missing database, privilege, prerequisites are permanent with a fix', () => {
  for (const code of PERMANENT_SQLSTATES) {
    const fault = classify(withCode(code));
    assert.equal(fault.kind, 'permanent', code);
    assert.ok(fault.fix && fault.fix.length > 10, `${code} names a fix`);
  }
});

test('SQLSTATEs: shutdown, crash, recovery, too many connections, connection loss, cancels are transient', () => {
  for (const code of TRANSIENT_SQLSTATES) assert.equal(classify(withCode(code)).kind, 'transient', code);
  for (const [cls, codes] of Object.entries(TRANSIENT_CLASSES)) {
    for (const code of codes) assert.equal(classify(withCode(code)).kind, 'transient', `${code} (class ${cls})`);
  }
});

test('AMQP reply codes: 403, 530, 406 permanent; the rest transient', () => {
  for (const code of PERMANENT_AMQP) {
    const fault = classify(withCode(code));
    assert.equal(fault.kind, 'permanent', String(code));
    assert.ok(fault.fix, `${code} names a fix`);
  }
  for (const code of TRANSIENT_AMQP) assert.equal(classify(withCode(code)).kind, 'transient', String(code));
});

test('errnos and our own timeouts are transient; EPIPE is not mistaken for a SQLSTATE', () => {
  for (const code of TRANSIENT_ERRNOS) assert.equal(classify(withCode(code)).kind, 'transient', code);
  assert.equal(classify(new TimeoutError('connecting', 1000)).kind, 'transient');
});

test('by code only: the text of a message decides nothing (defect 12.6a)', () => {
  // A refused connection to port 40325 is not "403 access refused".
  assert.equal(classify(withCode('ECONNREFUSED', 'connect ECONNREFUSED 127.0.0.1:40325')).kind, 'transient');
  const sink = classifyConnectError(withCode('ECONNREFUSED', 'connect ECONNREFUSED 127.0.0.1:40325'), 'amqp://guest:guest@127.0.0.1:40325');
  assert.equal(sink.severity, 'transient');
  // Words of a permanent fault in the text of a transient one, and the reverse.
  assert.equal(classify(withCode('57P01', 'ACCESS_REFUSED password authentication failed 403 530 wal_level')).kind, 'transient');
  assert.equal(classify(withCode('28P01', 'connection reset')).kind, 'permanent');
  assert.equal(classify(new Error('password authentication failed for user "x"')).kind, 'transient', 'no code: retried, not guessed');
  assert.equal(classifyConnectError(withCode(403, 'Handshake terminated by server'), 'amqp://localhost').severity, 'fatal');
  assert.equal(classifyConnectError(withCode(530, 'Expected ConnectionOpenOk'), 'amqp://localhost').severity, 'fatal');
});

test('a cause chain is followed; a PrerequisiteError is permanent wherever it is wrapped', () => {
  const wrapped = new Error('session failed', { cause: withCode('28P01') });
  assert.equal(classify(wrapped).kind, 'permanent');
  assert.ok(isPermanent(new Error('outer', { cause: new PrerequisiteError('wal_level') })));
});

test('classifyPgError: permanent -> PrerequisiteError naming the step, the code and the fix; transient unchanged', () => {
  const e = classifyPgError(withCode('28P01', 'password authentication failed for user "app"'), 'connecting to Postgres');
  assert.ok(e instanceof PrerequisiteError);
  assert.match(e.message, /^connecting to Postgres: Postgres refused the password: password authentication failed for user "app" \(SQLSTATE 28P01\)\. Fix: check the user and password/);
  const fixed = classifyPgError(withCode('42501'), 'starting replication', { '42501': 'ALTER ROLE app WITH REPLICATION' });
  assert.match((fixed as Error).message, /Fix: ALTER ROLE app WITH REPLICATION\.$/);
  const transient = withCode('57P01');
  assert.equal(classifyPgError(transient, 'x'), transient);
});
