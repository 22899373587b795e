#!/usr/bin/env node
/**
 * `npm test` after the build: starts a private Postgres cluster with wal_level=logical on a free
 * port (the machine's own cluster is left alone), checks RabbitMQ, runs the tests with node's test
 * runner, then removes the cluster and fails the run if the tests left processes, queues or
 * exchanges behind.
 *
 * Usage: node scripts/test.mjs [--typecheck] [test files or directories...] [--node-test-flags...]
 * Without paths: every *.test.ts under test/unit and test/integration. The alone file runs first
 * beside the unit files, then the integration files run side by side (see the constants below).
 */
import { spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative, resolve, sep } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import amqp from 'amqplib';
import { build } from 'esbuild';
import { startCluster, stopClustersUnder } from './pg-cluster.mjs';

const root = fileURLToPath(new URL('..', import.meta.url));
const log = (line) => process.stderr.write(`[test] ${line}\n`);
const runStart = Date.now();
/** Seconds since the run started, for the per-file timeline. */
const since = (t) => ((t - runStart) / 1000).toFixed(1);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
// node 20 applies --test-timeout to each test *file* as a whole, so this is a per-file hang guard.
const FILE_TIMEOUT_MS = 600_000;
// Integration files run side by side (each makes its own database, slot and broker names). Many of
// their seconds are spent waiting (on a timeout, a reconnect, a broker's confirm), so on 2 cores
// six at a time kept the cores busiest: whole runs took 175 s with four, 156 s with six.
const CONCURRENCY = Math.max(1, Number(process.env.PGWARREN_TEST_CONCURRENCY) || 6);
// A file that changes what every other file shares (a broker-wide alarm, a broker restart, a
// cluster-wide setting) carries this line. It runs first, by itself among the files that use the
// services; the unit files, which never touch them (they get no service URLs), and the type check
// fill the cores it leaves idle while it waits on the broker.
const ALONE = /^\/\/ test-runner: alone\b/m;
// A file that takes a minute or more carries `// test-runner: long ~N s (why)` and starts before
// the other integration files, the longest first, so that the run does not end with one long file
// going on alone while the other slots are idle. N is its time in a whole run on 2 cores.
const LONG = /^\/\/ test-runner: long\b(?:\s+~(\d+)\s*s)?/m;
/** Start order among the integration files: long ones by their estimate, then the rest (seconds each). */
function weight(text) {
  const m = LONG.exec(text);
  return m ? Number(m[1] ?? 60) : 0;
}
const isUnit = (file) => file.includes(`${join('test', 'unit')}`);

function findTests(paths) {
  const explicit = paths.length > 0;
  const files = [];
  const walk = (abs, named) => {
    if (statSync(abs).isDirectory()) {
      for (const entry of readdirSync(abs).sort()) walk(join(abs, entry), false);
    } else if (named || abs.endsWith('.test.ts')) files.push(abs);
  };
  for (const p of explicit ? paths : ['test/unit', 'test/integration']) {
    const abs = resolve(root, p);
    if (existsSync(abs)) walk(abs, explicit);
    else if (explicit) throw new Error(`no such test file or directory: ${p}`);
  }
  return files;
}

async function checkBroker(url) {
  try {
    const conn = await amqp.connect(url, { timeout: 5000 });
    conn.on('error', () => {});
    await conn.close();
    return null;
  } catch (err) {
    return err.message || String(err);
  }
}

/**
 * Queues and exchanges with pgwarren's default names (pgwarren, pgwarren.dead, ...): a test that
 * let a daemon fall back to a default name leaks it into the shared broker. Null when rabbitmqctl
 * cannot tell.
 */
async function defaultNamed(amqpUrl) {
  const left = brokerLeftovers(amqpUrl, 'pgwarren');
  if (!left) return null;
  // Exactly the option table's default names (and a default stream's partitions), not anything
  // that merely starts with "pgwarren": another run on the same broker (the demo's
  // pgwarren-demo-*, a second npm test) owns those, and deleting them would break it.
  const { OPTIONS } = await import('../dist/config/options.js');
  const defaults = new Set(OPTIONS.map((o) => o.default).filter((d) => typeof d === 'string' && d.startsWith('pgwarren')));
  const isDefault = (n) => defaults.has(n) || defaults.has(n.replace(/-\d+$/, ''));
  return { queues: new Set(left.queues.filter(isDefault)), exchanges: new Set(left.exchanges.filter(isDefault)) };
}

/** This run's queues and exchanges still on the broker; null when rabbitmqctl cannot tell. */
function brokerLeftovers(amqpUrl, prefix) {
  const vhost = decodeURIComponent(new URL(amqpUrl).pathname.slice(1)) || '/';
  const list = (what) => {
    const r = spawnSync('rabbitmqctl', [`list_${what}`, '-p', vhost, '-q', '--no-table-headers', 'name'], { encoding: 'utf8', timeout: 60_000 });
    if (r.status !== 0) return null;
    return r.stdout.split('\n').map((s) => s.trim()).filter((s) => s.startsWith(prefix));
  };
  const queues = list('queues');
  const exchanges = list('exchanges');
  return queues && exchanges ? { queues, exchanges } : null;
}

async function deleteBrokerObjects(amqpUrl, { queues, exchanges }) {
  const conn = await amqp.connect(amqpUrl);
  conn.on('error', () => {});
  for (const [kind, names] of [['queue', queues], ['exchange', exchanges]]) {
    for (const name of names) {
      const ch = await conn.createChannel();
      ch.on('error', () => {});
      await (kind === 'queue' ? ch.deleteQueue(name) : ch.deleteExchange(name)).catch((e) => log(`could not delete ${kind} ${name}: ${e.message}`));
      await ch.close().catch(() => {});
    }
  }
  await conn.close();
}

/** Processes still in a process group, as "pid command" lines. */
function groupMembers(pgid) {
  const r = spawnSync('ps', ['-eo', 'pid=,pgid=,args='], { encoding: 'utf8' });
  return (r.stdout || '')
    .split('\n')
    .map((l) => l.trim().split(/\s+/))
    .filter((f) => f.length >= 3 && Number(f[1]) === pgid)
    .map((f) => `${f[0]} ${f.slice(2).join(' ')}`);
}

function killGroup(pgid, signal) {
  try {
    process.kill(-pgid, signal);
  } catch {
    /* group already empty */
  }
}

/**
 * The tests and the sources they import, compiled once per run to plain JavaScript under
 * node_modules/.cache (a directory per run, removed after it), in the same layout, so that each
 * test file starts as plain node. Loading them through tsx instead cost about a third of a second
 * of CPU per test process (a loader thread, every import translated on the way), some ninety
 * test processes a run.
 *
 * `import.meta.url` is replaced by the source file's own URL: the tests find the repository's
 * files (dist/cli.js, README.md, examples/) relative to where they are written, not where they
 * run from. Inline source maps make a failure's stack point at the .ts lines.
 */
async function compileTests(compiledRoot) {
  const sourcesOf = (dir) =>
    readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
      e.isDirectory() ? sourcesOf(join(dir, e.name)) : e.name.endsWith('.ts') && !e.name.endsWith('.d.ts') ? [join(dir, e.name)] : [],
    );
  const ownUrl = {
    name: 'own-import-meta-url',
    setup(b) {
      b.onLoad({ filter: /\.ts$/ }, (args) => ({
        contents: readFileSync(args.path, 'utf8').replaceAll('import.meta.url', JSON.stringify(pathToFileURL(args.path).href)),
        loader: 'ts',
      }));
    },
  };
  await build({
    absWorkingDir: root,
    entryPoints: [...sourcesOf(join(root, 'src')), ...sourcesOf(join(root, 'test'))],
    outdir: compiledRoot,
    outbase: root,
    platform: 'node',
    format: 'esm',
    target: 'node20',
    sourcemap: 'inline',
    sourcesContent: false,
    logLevel: 'warning',
    tsconfig: 'tsconfig.json',
    plugins: [ownUrl],
  });
  // Inside node_modules no package.json above says "module": this one does.
  mkdirSync(compiledRoot, { recursive: true });
  writeFileSync(join(compiledRoot, 'package.json'), '{ "type": "module" }\n');
}
/** Where a test file's compiled JavaScript is; null for a file outside test/ (run through tsx). */
function compiledOf(compiledRoot, file) {
  const rel = relative(root, file);
  return rel.startsWith(`test${sep}`) && rel.endsWith('.ts') ? join(compiledRoot, rel.replace(/\.ts$/, '.js')) : null;
}

/** `tsc -p tsconfig.test.json` in the background; resolves with its exit code and output. */
function startTypecheck() {
  const t0 = Date.now();
  const tsc = join(root, 'node_modules', 'typescript', 'bin', 'tsc');
  const child = spawn(process.execPath, [tsc, '-p', 'tsconfig.test.json'], { cwd: root, stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  child.stdout.on('data', (d) => (output += d));
  child.stderr.on('data', (d) => (output += d));
  return new Promise((resolve) => {
    child.on('error', (err) => resolve({ code: 1, output: err.message, ms: Date.now() - t0 }));
    child.on('close', (c) => resolve({ code: c ?? 1, output, ms: Date.now() - t0 }));
  });
}

/** Process groups of the test files running now (each file runs in a group of its own). */
const running = new Set();

/**
 * One test file in its own `node --test` process and process group: this script, not node's
 * runner, decides the order files start in (node 20 sorts the files it is given by name), and
 * whatever a file leaves running is found in its group and ended. The file's TAP output is
 * printed in one piece when it ends, so that files running side by side do not interleave.
 */
async function runFile(file, { env, nodeFlags, compiledRoot }) {
  const t0 = Date.now();
  // --test-force-exit: once a file's tests are done, its process ends even if a library left a
  // socket or timer behind (the stream client does after a refused connect); without it the
  // file sat until FILE_TIMEOUT_MS. Daemons and broker objects are still checked.
  const compiled = compiledOf(compiledRoot, file);
  const load = compiled ? ['--enable-source-maps'] : ['--import', 'tsx'];
  const argv = [...load, '--test', '--test-reporter=tap', '--test-force-exit', `--test-timeout=${FILE_TIMEOUT_MS}`, ...nodeFlags, compiled ?? file];
  const child = spawn(process.execPath, argv, { cwd: root, env, stdio: ['ignore', 'pipe', 'pipe'], detached: true });
  running.add(child.pid);
  const chunks = [];
  child.stdout.on('data', (d) => chunks.push(d));
  child.stderr.on('data', (d) => chunks.push(d));
  let code = await new Promise((done) => child.on('close', (c, signal) => done(c ?? (signal ? 1 : 0))));
  running.delete(child.pid);
  const output = Buffer.concat(chunks).toString('utf8');
  const counts = {};
  for (const [, key, n] of output.matchAll(/^# (tests|pass|fail|cancelled|skipped|todo) (\d+)$/gm)) counts[key] = Number(n);

  let left = groupMembers(child.pid);
  for (let i = 0; i < 20 && left.length > 0; i++) {
    await sleep(100); // a test process's helpers (esbuild) may still be on their way out
    left = groupMembers(child.pid);
  }
  const name = relative(root, file);
  process.stdout.write(`# file: ${name}\n${output}${output.endsWith('\n') ? '' : '\n'}`);
  if (left.length > 0) {
    log(`${name} left processes running (killing them):\n  ${left.join('\n  ')}`);
    killGroup(child.pid, 'SIGKILL');
    code = code || 1;
  }
  log(`${name}: ${code === 0 ? 'ok' : `FAILED (exit ${code})`}, ${counts.pass ?? 0} of ${counts.tests ?? 0} passed in ${((Date.now() - t0) / 1000).toFixed(1)} s (${since(t0)}-${since(Date.now())} s into the run)`);
  return { code, counts };
}

async function main() {
  const args = process.argv.slice(2).filter((a) => a !== '--typecheck');
  // The type check (tsconfig.test.json: src, tests, bench) runs beside the tests instead of before
  // them: it is a quarter of a minute of one core that the tests' waiting leaves free. It decides
  // the exit code like a failing test.
  const typecheck = process.argv.includes('--typecheck') ? startTypecheck() : null;
  const nodeFlags = args.filter((a) => a.startsWith('--'));
  let files;
  try {
    files = findTests(args.filter((a) => !a.startsWith('--')));
  } catch (err) {
    log(err.message);
    return 2;
  }
  if (files.length === 0) {
    log('no test files found');
    return 2;
  }

  const amqpUrl = process.env.PGWARREN_TEST_AMQP_URL || process.env.AMQP_URL || 'amqp://guest:guest@127.0.0.1:5672';
  const brokerError = await checkBroker(amqpUrl);
  if (brokerError) {
    log(`RabbitMQ is not reachable at ${new URL(amqpUrl).host} (${brokerError}).`);
    log('Start it with `rabbitmq-server -detached && rabbitmqctl await_startup`, or point AMQP_URL at a running broker.');
    return 1;
  }

  let interrupted = null;
  const onSignal = (sig) => {
    if (interrupted) return;
    interrupted = sig;
    log(`${sig}: stopping the tests`);
    for (const pid of running) {
      killGroup(pid, 'SIGTERM');
      setTimeout(() => killGroup(pid, 'SIGKILL'), 10_000).unref();
    }
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  process.on('SIGHUP', onSignal);

  // Broker names of this run start with this, so a concurrent run's objects are never touched.
  const runId = randomBytes(3).toString('hex');
  const defaultsBefore = await defaultNamed(amqpUrl);
  const brokerPrefix = `pgwarren-test-${runId}-`;
  const compiledRoot = join(root, 'node_modules', '.cache', 'pgwarren-tests', runId);
  let cluster = null;
  // The tests' temporary files go here (their TMPDIR), and go with it at the end, whatever state
  // a test file was ended in: its directories, and any private cluster it started (tls.test.ts
  // does), which would otherwise keep running after a file killed by a signal or the timeout.
  // Readable by all: as root, the clusters run as the postgres user and must reach their files.
  const runTmp = mkdtempSync(join(tmpdir(), `pgwarren-test-${runId}-`));
  chmodSync(runTmp, 0o755);
  let runTmpLeft = true;
  const removeRunTmp = () => {
    if (!runTmpLeft) return 0;
    runTmpLeft = false;
    const stopped = stopClustersUnder(runTmp);
    if (stopped.length > 0) log(`stopped Postgres clusters the tests left running: ${stopped.map((d) => relative(runTmp, d)).join(', ')}`);
    rmSync(runTmp, { recursive: true, force: true });
    return stopped.length;
  };
  // Whatever happens from here on, the clusters go, even if this process is on its way out.
  process.on('exit', () => {
    cluster?.stop();
    removeRunTmp();
  });
  let code = 1;
  try {
    const t0 = Date.now();
    // Compiling (under a second) overlaps the cluster's start; its failure is awaited after the
    // cluster is ours, so that the cleanup below always knows the cluster.
    const compiling = compileTests(compiledRoot).then(
      () => null,
      (err) => err,
    );
    cluster = await startCluster();
    const compileError = await compiling;
    if (compileError) throw new Error(`compiling the tests failed: ${compileError.message}`);
    const { port, bindir, datadir, wal2json } = cluster;
    log(`private Postgres ${bindir} on 127.0.0.1:${port} ready in ${Date.now() - t0} ms; wal2json ${wal2json ? 'available' : 'missing'}; run ${runId}`);
    if (interrupted) throw new Error(`interrupted by ${interrupted}`);
    // Half of the contract is "the same events with both plugins": a run that cannot check it must
    // fail, not pass quietly with those tests skipped. A developer may opt out explicitly.
    if (!wal2json && process.env.PGWARREN_TEST_WITHOUT_WAL2JSON !== '1') {
      throw new Error(
        `wal2json is not installed for ${bindir}: install postgresql-${bindir.split('/').at(-2)}-wal2json (Debian), ` +
          'or set PGWARREN_TEST_WITHOUT_WAL2JSON=1 to run without the wal2json tests (they are then skipped)',
      );
    }

    // Unit files get no service URLs: one that reached for Postgres or RabbitMQ would fail at
    // testEnv(), instead of being disturbed by the alone file running beside it.
    const unitEnv = {
      ...process.env,
      PGWARREN_TEST_RUN: runId,
      TMPDIR: runTmp,
      // Shared by every run on the machine (test/support/ports.ts claims ports there).
      PGWARREN_TEST_MACHINE_TMP: tmpdir(),
    };
    const env = {
      ...unitEnv,
      PGWARREN_TEST_PG_URL: cluster.url,
      PGWARREN_TEST_PG_BINDIR: bindir,
      PGWARREN_TEST_PG_DATADIR: datadir,
      PGWARREN_TEST_AMQP_URL: amqpUrl,
      PGWARREN_TEST_WAL2JSON: wal2json ? '1' : '0',
    };
    const text = new Map(files.map((f) => [f, readFileSync(f, 'utf8')]));
    const alone = files.filter((f) => ALONE.test(text.get(f)));
    const units = files.filter((f) => isUnit(f) && !alone.includes(f));
    const weights = new Map(files.map((f) => [f, weight(text.get(f))]));
    const integration = files.filter((f) => !isUnit(f) && !alone.includes(f)).sort((a, b) => weights.get(b) - weights.get(a));
    // Each phase is a set of queues run side by side, each queue with its own number of slots.
    const phases = [
      [
        { files: alone, concurrency: 1, env },
        { files: units, concurrency: Math.min(2, CONCURRENCY), env: unitEnv },
      ],
      [{ files: integration, concurrency: CONCURRENCY, env }],
    ]
      .map((queues) => queues.filter((q) => q.files.length > 0))
      .filter((queues) => queues.length > 0);
    code = 0;
    const totals = { tests: 0, pass: 0, fail: 0, cancelled: 0, skipped: 0, todo: 0 };
    const failed = [];
    for (const queues of phases) {
      if (interrupted) break;
      const workers = [];
      for (const q of queues) {
        log(`${q.files.length} file(s), ${q.concurrency} at a time: ${q.files.map((f) => relative(root, f)).join(' ')}`);
        const pending = [...q.files];
        const worker = async () => {
          for (let file = pending.shift(); file && !interrupted; file = pending.shift()) {
            const result = await runFile(file, { env: q.env, nodeFlags, compiledRoot });
            for (const k of Object.keys(totals)) totals[k] += result.counts[k] ?? 0;
            if (result.code !== 0) {
              failed.push(relative(root, file));
              code = 1;
            }
          }
        };
        workers.push(...Array.from({ length: q.concurrency }, worker));
      }
      await Promise.all(workers);
    }
    log(`tests ${totals.tests}, pass ${totals.pass}, fail ${totals.fail}, cancelled ${totals.cancelled}, skipped ${totals.skipped}, todo ${totals.todo}`);
    if (failed.length > 0) log(`failed: ${failed.join(', ')}`);
  } catch (err) {
    log(`setup failed: ${err.message}`);
    code = 1;
  } finally {
    cluster?.stop();
    cluster = null;
    rmSync(compiledRoot, { recursive: true, force: true });
    // A cluster still running here is a test's that did not stop its own: a failure unless the
    // run was interrupted (then its files had no chance to).
    if (removeRunTmp() > 0 && !interrupted) code = code || 1;
  }

  const left = brokerLeftovers(amqpUrl, brokerPrefix);
  if (!left) {
    log('rabbitmqctl is not usable here: leftover queues and exchanges were not checked');
  } else if (left.queues.length > 0 || left.exchanges.length > 0) {
    log(`the tests left RabbitMQ objects behind (deleting them): queues ${left.queues.join(', ') || '-'}; exchanges ${left.exchanges.join(', ') || '-'}`);
    await deleteBrokerObjects(amqpUrl, left).catch((e) => log(`broker cleanup failed: ${e.message}`));
    code = code || 1;
  }
  const defaultsAfter = defaultsBefore && (await defaultNamed(amqpUrl));
  if (defaultsBefore && defaultsAfter) {
    const queues = [...defaultsAfter.queues].filter((n) => !defaultsBefore.queues.has(n));
    const exchanges = [...defaultsAfter.exchanges].filter((n) => !defaultsBefore.exchanges.has(n));
    if (queues.length > 0 || exchanges.length > 0) {
      log(`the tests left objects with pgwarren's default names on the broker (deleting them; give the daemon a test name): queues ${queues.join(', ') || '-'}; exchanges ${exchanges.join(', ') || '-'}`);
      await deleteBrokerObjects(amqpUrl, { queues, exchanges }).catch((e) => log(`broker cleanup failed: ${e.message}`));
      code = code || 1;
    }
  }
  if (typecheck) {
    const result = await typecheck;
    if (result.code !== 0) {
      log(`the type check failed (tsc -p tsconfig.test.json):\n${result.output}`);
      code = code || 1;
    } else log(`type check passed in ${result.ms} ms`);
  }
  if (interrupted) code = 128 + ({ SIGHUP: 1, SIGINT: 2, SIGTERM: 15 }[interrupted] ?? 0);
  return code;
}

main().then(
  (code) => process.exit(code),
  (err) => {
    log(err.stack || String(err));
    process.exit(1);
  },
);
