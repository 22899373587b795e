/**
 * A throwaway Postgres cluster with wal_level=logical, for the tests and the benchmarks: the
 * machine's own cluster is never touched. initdb and postgres refuse to run as root, so as root the
 * tools run as the `postgres` OS user.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { chownSync, existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir, userInfo } from 'node:os';
import { join } from 'node:path';

const asRoot = userInfo().uid === 0;

/** The server binaries: pg_config's, else the newest /usr/lib/postgresql/N/bin (Debian). */
export function pgBindir() {
  const fromConfig = spawnSync('pg_config', ['--bindir'], { encoding: 'utf8' });
  const candidates = [];
  if (fromConfig.status === 0) candidates.push(fromConfig.stdout.trim());
  if (existsSync('/usr/lib/postgresql')) {
    const versions = readdirSync('/usr/lib/postgresql').filter((v) => /^\d+$/.test(v)).sort((a, b) => Number(b) - Number(a));
    candidates.push(...versions.map((v) => `/usr/lib/postgresql/${v}/bin`));
  }
  const dir = candidates.find((d) => existsSync(join(d, 'initdb')) && existsSync(join(d, 'pg_ctl')));
  if (!dir) throw new Error('PostgreSQL server binaries (initdb, pg_ctl) not found: install postgresql (Debian: apt-get install postgresql-15)');
  return dir;
}

/** A port nothing listens on right now (the kernel's pick for port 0). */
export function freePort() {
  return new Promise((resolvePort, reject) => {
    const srv = createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolvePort(port));
    });
  });
}

/** Whether wal2json.so sits beside the server's own modules. */
export function hasWal2json(bindir) {
  const pkglib = spawnSync(join(bindir, 'pg_config'), ['--pkglibdir'], { encoding: 'utf8' });
  const dirs = [pkglib.status === 0 ? pkglib.stdout.trim() : '', join(bindir, '..', 'lib')];
  return dirs.some((d) => d && existsSync(join(d, 'wal2json.so')));
}

function pgTool(bindir, tool, args) {
  const cmd = join(bindir, tool);
  const [file, argv] = asRoot ? ['runuser', ['-u', 'postgres', '--', cmd, ...args]] : [cmd, args];
  return execFileSync(file, argv, { stdio: ['ignore', 'pipe', 'pipe'], encoding: 'utf8' });
}

/**
 * Stops every cluster whose data directory lies under `dir` (at most three levels down), the way
 * a crash would (immediate): for clusters whose owner is gone without calling stop(), a test file
 * ended by a signal say. pg_ctl starts the server in a session of its own, so ending the test's
 * process group does not end it. Returns the data directories it stopped.
 */
export function stopClustersUnder(dir) {
  const stopped = [];
  const walk = (d, depth) => {
    let entries;
    try {
      entries = readdirSync(d, { withFileTypes: true });
    } catch {
      return;
    }
    if (entries.some((e) => e.name === 'postmaster.pid')) {
      try {
        pgTool(pgBindir(), 'pg_ctl', ['-D', d, '-m', 'immediate', '-w', '-t', '20', 'stop']);
        stopped.push(d);
      } catch {
        /* not running after all (a stale pid file) */
      }
      return;
    }
    if (depth < 3) for (const e of entries) if (e.isDirectory()) walk(join(d, e.name), depth + 1);
  };
  walk(dir, 0);
  return stopped;
}

/**
 * Start a cluster; returns { url, port, bindir, datadir, wal2json, stop() }. `stop()` is
 * synchronous so that signal and exit handlers can call it. `settings` adds or overrides
 * `-c name=value` server settings.
 */
export async function startCluster(settings = {}) {
  const bindir = pgBindir();
  const base = mkdtempSync(join(tmpdir(), 'pgwarren-pg-'));
  const datadir = join(base, 'data');
  let running = false;
  const stop = () => {
    if (running) {
      running = false;
      try {
        pgTool(bindir, 'pg_ctl', ['-D', datadir, '-m', 'fast', '-w', '-t', '20', 'stop']);
      } catch {
        try {
          pgTool(bindir, 'pg_ctl', ['-D', datadir, '-m', 'immediate', '-w', '-t', '20', 'stop']);
        } catch {
          /* already gone */
        }
      }
    }
    rmSync(base, { recursive: true, force: true });
  };
  try {
    if (asRoot) {
      const id = (flag) => Number(execFileSync('id', [flag, 'postgres'], { encoding: 'utf8' }).trim());
      chownSync(base, id('-u'), id('-g'));
    }
    const initdb = (locale) => pgTool(bindir, 'initdb', ['-D', datadir, '-U', 'postgres', '--auth=trust', '-E', 'UTF8', `--locale=${locale}`, '--no-sync']);
    try {
      initdb('C.UTF-8');
    } catch {
      // Older glibc images lack C.UTF-8; plain C with UTF8 encoding is as good for tests.
      rmSync(datadir, { recursive: true, force: true });
      initdb('C');
    }
    // This Postgres build only lets plugins named in its output_plugin_libraries setting (default
    // 'pgoutput, test_decoding') be used, even by a superuser; stock builds have no such setting.
    const describe = spawnSync(join(bindir, 'postgres'), ['--describe-config'], { encoding: 'utf8' });
    const pluginAllowList = /^output_plugin_libraries\t/m.test(describe.stdout ?? '') ? { output_plugin_libraries: 'pgoutput,test_decoding,wal2json' } : {};
    const start = async () => {
      const port = await freePort();
      const all = {
        port: String(port),
        listen_addresses: '127.0.0.1',
        unix_socket_directories: base,
        wal_level: 'logical',
        max_replication_slots: '64',
        max_wal_senders: '64',
        max_connections: '200',
        fsync: 'off',
        synchronous_commit: 'off',
        full_page_writes: 'off',
        wal_sender_timeout: '60s',
        log_min_messages: 'warning',
        ...pluginAllowList,
        ...settings,
      };
      const options = Object.entries(all).map(([k, v]) => `-c ${k}=${v}`).join(' ');
      running = true;
      pgTool(bindir, 'pg_ctl', ['-D', datadir, '-l', join(base, 'postgres.log'), '-w', '-t', '60', '-o', options, 'start']);
      return port;
    };
    let port;
    try {
      port = await start();
    } catch {
      // Another process may have taken the free port before the server bound it: one more try.
      port = await start();
    }
    return { url: `postgres://postgres@127.0.0.1:${port}/postgres`, port, bindir, datadir, wal2json: hasWal2json(bindir), stop };
  } catch (err) {
    const detail = err.stderr || err.message;
    let serverLog = '';
    try {
      serverLog = execFileSync('tail', ['-n', '20', join(base, 'postgres.log')], { encoding: 'utf8' });
    } catch {
      /* no log yet */
    }
    stop();
    throw new Error(`could not start a private Postgres cluster: ${detail}${serverLog ? `\nserver log:\n${serverLog}` : ''}`);
  }
}
