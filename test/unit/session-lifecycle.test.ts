/**
 * The session lifecycle in-process (README "Failure handling"), with fake parts for the source and
 * the sink: which states a session visits, what a failure in each state leaves as, and that a stop
 * in each state ends it cleanly and promptly. The real parts are exercised by the integration tests
 * (test/integration/faults.test.ts, fault-matrix.test.ts).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import pino from 'pino';
import { Session, type SessionControl, type SessionOutcome, type SessionParts, type SessionState, type StreamEnd } from '../../src/pipeline/session.js';
import { ReplanRequest } from '../../src/pipeline/pipeline.js';
import { PrerequisiteError, SessionFailure, UsageError } from '../../src/errors.js';
import { tableKey } from '../../src/shared/table-name.js';
import type { TxPlan } from '../../src/filter/flood-guard.js';

type Step = 'prepareSource' | 'openSink' | 'startStream';
/** How a connecting step behaves: succeed, fail with the error, or never finish (until a stop). */
type Behaviour = 'ok' | 'hang' | Error;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Fake source and sink: records what the lifecycle asked for, ends the stream when told. */
class FakeParts implements SessionParts {
  readonly calls: string[] = [];
  unconfirmedCount = 0;
  failureNow: Error | null = null;
  closedAbandoned: boolean | null = null;
  private endStream!: (end: StreamEnd) => void;
  private readonly end = new Promise<StreamEnd>((resolve) => (this.endStream = resolve));
  /** Resolves when the named connecting step (or 'streaming') has been reached. */
  readonly reached = new Map<string, () => void>();
  private readonly waits = new Map<string, Promise<void>>();

  constructor(private readonly behaviour: Partial<Record<Step, Behaviour>> = {}) {
    for (const name of ['prepareSource', 'openSink', 'startStream', 'streaming']) {
      this.waits.set(name, new Promise<void>((resolve) => this.reached.set(name, resolve)));
    }
  }

  at(name: Step | 'streaming'): Promise<void> {
    return this.waits.get(name)!;
  }

  finishStream(end: StreamEnd): void {
    this.endStream(end);
  }

  private async connecting(name: Step, control: SessionControl): Promise<void> {
    this.calls.push(name);
    this.reached.get(name)!();
    const b = this.behaviour[name] ?? 'ok';
    if (b === 'hang') await control.step(new Promise<never>(() => undefined));
    else if (b instanceof Error) await control.step(Promise.reject(b));
    else await control.step(Promise.resolve());
  }

  prepareSource(control: SessionControl): Promise<void> {
    return this.connecting('prepareSource', control);
  }
  openSink(control: SessionControl): Promise<void> {
    return this.connecting('openSink', control);
  }
  startStream(control: SessionControl): Promise<void> {
    return this.connecting('startStream', control);
  }
  streaming(): void {
    this.calls.push('streaming');
    this.reached.get('streaming')!();
  }
  ended(): Promise<StreamEnd> {
    return this.end;
  }
  unconfirmed(): number {
    return this.unconfirmedCount;
  }
  failure(): Error | null {
    return this.failureNow;
  }
  classify(end: Exclude<StreamEnd, { kind: 'repartitioned' }>): Error {
    if (end.kind === 'stalled') return new SessionFailure('postgres', new Error(`stalled ${end.silentMs}`));
    if (end.kind === 'sink') return new SessionFailure('rabbitmq', end.reason);
    if (end.reason instanceof UsageError || end.reason instanceof PrerequisiteError) return end.reason;
    return new SessionFailure('postgres', end.reason);
  }
  async report(force: boolean): Promise<void> {
    this.calls.push(force ? 'report' : 'report?');
  }
  reported(): string {
    return '0/0';
  }
  published(): number {
    return 0;
  }
  async finish(): Promise<void> {
    this.calls.push('finish');
  }
  async close(abandoned: boolean): Promise<void> {
    this.calls.push('close');
    this.closedAbandoned = abandoned;
  }
  brokerUrlIndex(): number | undefined {
    return undefined;
  }
}

function session(parts: FakeParts, shutdownTimeoutSeconds = 5) {
  const states: SessionState[] = [];
  const s = new Session(parts, { shutdownTimeoutSeconds, log: pino({ level: 'silent' }), onState: (state) => states.push(state) });
  return { s, states };
}

/** `run()`'s outcome or error, failing the test if it takes longer than `ms` (a hang). */
async function settle(run: Promise<SessionOutcome>, ms = 2_000): Promise<{ outcome?: SessionOutcome; error?: unknown }> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const hang = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`session did not end within ${ms} ms`)), ms)));
  try {
    return await Promise.race([run.then((outcome) => ({ outcome }), (error: unknown) => ({ error })), hang]);
  } finally {
    clearTimeout(timer);
  }
}

const plan = (diverted?: number): TxPlan => ({
  commitLsn: 42n,
  flooded: new Map(),
  ...(diverted !== undefined && { diverted: new Map([[tableKey('public', 't'), diverted]]) }),
});

test('a session that is stopped while streaming visits connecting, streaming, draining, ended', async () => {
  const parts = new FakeParts();
  const { s, states } = session(parts);
  const run = s.run();
  await parts.at('streaming');
  s.stop();
  const { outcome, error } = await settle(run);
  assert.equal(error, undefined);
  assert.equal(outcome, 'stopped');
  assert.deepEqual(states, ['connecting', 'streaming', 'draining', 'ended']);
  // Prepared in order, drained with a final report, background stopped, everything closed politely.
  assert.deepEqual(parts.calls, ['prepareSource', 'openSink', 'startStream', 'streaming', 'report', 'finish', 'close']);
  assert.equal(parts.closedAbandoned, false);
});

for (const step of ['prepareSource', 'openSink', 'startStream'] as const) {
  test(`a transient failure in ${step} (connecting) ends the session as that SessionFailure, without streaming`, async () => {
    const failure = new SessionFailure(step === 'openSink' ? 'rabbitmq' : 'postgres', new Error('refused'));
    const parts = new FakeParts({ [step]: failure });
    const { s, states } = session(parts);
    const { error } = await settle(s.run());
    assert.equal(error, failure);
    assert.deepEqual(states, ['connecting', 'ended']);
    assert.ok(!parts.calls.includes('streaming') && !parts.calls.includes('report'), parts.calls.join(','));
    assert.equal(parts.calls.at(-1), 'close');
    assert.equal(parts.closedAbandoned, false);
  });

  test(`a stop while ${step} (connecting) hangs abandons the step and ends 'stopped' at once`, async () => {
    const parts = new FakeParts({ [step]: 'hang' });
    const { s, states } = session(parts);
    const run = s.run();
    await parts.at(step);
    s.stop();
    const { outcome, error } = await settle(run);
    assert.equal(error, undefined);
    assert.equal(outcome, 'stopped');
    assert.deepEqual(states, ['connecting', 'ended']);
    // The abandoned step's connection is destroyed, not ended politely.
    assert.equal(parts.closedAbandoned, true);
    assert.ok(!parts.calls.includes('streaming'));
  });
}

test('a permanent failure while connecting leaves as the PrerequisiteError itself (exit 3), not wrapped', async () => {
  const failure = new PrerequisiteError('wal_level is "replica"');
  const parts = new FakeParts({ prepareSource: failure });
  const { s } = session(parts);
  const { error } = await settle(s.run());
  assert.equal(error, failure);
});

test('a stop that comes before run() ends the session without connecting anything', async () => {
  const parts = new FakeParts();
  const { s, states } = session(parts);
  s.stop();
  const { outcome } = await settle(s.run());
  assert.equal(outcome, 'stopped');
  assert.deepEqual(states, ['connecting', 'ended']);
  assert.deepEqual(parts.calls, ['prepareSource', 'close']);
});

const streamEnds: Array<{ name: string; end: StreamEnd; target: string }> = [
  { name: 'the replication stream', end: { kind: 'stream', reason: new Error('connection reset') }, target: 'postgres' },
  { name: 'the sink', end: { kind: 'sink', reason: new Error('channel closed') }, target: 'rabbitmq' },
  { name: 'a stall', end: { kind: 'stalled', silentMs: 6000 }, target: 'postgres' },
];
for (const { name, end, target } of streamEnds) {
  test(`a failure of ${name} while streaming ends the session classified (${target}), after a final position report`, async () => {
    const parts = new FakeParts();
    const { s, states } = session(parts);
    const run = s.run();
    await parts.at('streaming');
    parts.finishStream(end);
    const { error } = await settle(run);
    assert.ok(error instanceof SessionFailure, String(error));
    assert.equal(error.target, target);
    assert.deepEqual(states, ['connecting', 'streaming', 'ended']);
    assert.deepEqual(parts.calls.slice(3), ['streaming', 'finish', 'report', 'close']);
  });
}

test('a configuration Postgres refuses while streaming leaves as the UsageError (exit 2)', async () => {
  const parts = new FakeParts();
  const { s } = session(parts);
  const run = s.run();
  await parts.at('streaming');
  const refused = new UsageError('row filter refused');
  parts.finishStream({ kind: 'stream', reason: refused });
  const { error } = await settle(run);
  assert.equal(error, refused);
});

test('a stop while draining (shutdown) still ends within the shutdown timeout when confirms never come', async () => {
  const parts = new FakeParts();
  parts.unconfirmedCount = 3;
  const { s, states } = session(parts, 0.3);
  const run = s.run();
  await parts.at('streaming');
  const started = Date.now();
  s.stop();
  const { outcome } = await settle(run);
  assert.equal(outcome, 'stopped');
  assert.ok(Date.now() - started >= 250, 'waited for confirms');
  assert.deepEqual(states, ['connecting', 'streaming', 'draining', 'ended']);
  assert.ok(parts.calls.includes('report'));
});

test('a broker failure while draining ends the drain at once; the stop still ends clean', async () => {
  const parts = new FakeParts();
  parts.unconfirmedCount = 3;
  const { s } = session(parts, 30);
  const run = s.run();
  await parts.at('streaming');
  s.stop();
  await sleep(50);
  parts.failureNow = new Error('connection closed');
  const { outcome } = await settle(run, 1_000);
  assert.equal(outcome, 'stopped');
});

test('a partition appearing under wal2json drains, then ends as a transient failure; a stop while that drains ends it stopped', async () => {
  {
    const parts = new FakeParts();
    const { s, states } = session(parts);
    const run = s.run();
    await parts.at('streaming');
    parts.finishStream({ kind: 'repartitioned' });
    const { error } = await settle(run);
    assert.ok(error instanceof SessionFailure && error.target === 'postgres', String(error));
    assert.deepEqual(states, ['connecting', 'streaming', 'draining', 'ended']);
  }
  {
    const parts = new FakeParts();
    parts.unconfirmedCount = 1;
    const { s } = session(parts, 0.3);
    const run = s.run();
    await parts.at('streaming');
    parts.finishStream({ kind: 'repartitioned' });
    await sleep(50);
    s.stop();
    const { outcome } = await settle(run);
    assert.equal(outcome, 'stopped');
  }
});

test('a flood re-plan waits for confirms, drains, and hands the plan to the supervisor', async () => {
  const parts = new FakeParts();
  parts.unconfirmedCount = 2;
  const { s, states } = session(parts, 0.05);
  const run = s.run();
  await parts.at('streaming');
  const wanted = plan(5);
  parts.finishStream({ kind: 'stream', reason: new ReplanRequest(wanted) });
  // Not a shutdown: the wait is not bounded by the shutdown timeout.
  await sleep(200);
  assert.deepEqual(states, ['connecting', 'streaming']);
  parts.unconfirmedCount = 0;
  const { outcome } = await settle(run);
  assert.deepEqual(outcome, { replan: wanted });
  assert.deepEqual(states, ['connecting', 'streaming', 'draining', 'ended']);
});

test('a re-plan whose diverted rows the broker did not confirm fails (rabbitmq) instead of skipping them', async () => {
  const parts = new FakeParts();
  parts.unconfirmedCount = 2;
  const { s } = session(parts);
  const run = s.run();
  await parts.at('streaming');
  parts.finishStream({ kind: 'stream', reason: new ReplanRequest(plan(5)) });
  await sleep(50);
  parts.failureNow = new Error('nacked');
  const { error } = await settle(run);
  assert.ok(error instanceof SessionFailure && error.target === 'rabbitmq', String(error));
  assert.equal((error as SessionFailure).cause, parts.failureNow);
});

test('a stop while a re-plan waits for confirms ends the session stopped', async () => {
  const parts = new FakeParts();
  parts.unconfirmedCount = 2;
  const { s } = session(parts, 0.1);
  const run = s.run();
  await parts.at('streaming');
  parts.finishStream({ kind: 'stream', reason: new ReplanRequest(plan()) });
  await sleep(50);
  s.stop();
  const { outcome } = await settle(run);
  assert.equal(outcome, 'stopped');
});
