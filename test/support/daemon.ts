/**
 * Runs the built daemon (`dist/cli.js`) as a child process, the way operators do, with only the
 * environment the test gives it, and keeps its JSON log lines for assertions.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createServer } from 'node:net';
import { fileURLToPath } from 'node:url';
import { after } from 'node:test';
import { waitUntil } from './wait.js';
import { deadLetterExchangeOf } from './env.js';
import { claimPort } from './ports.js';

const cli = fileURLToPath(new URL('../../dist/cli.js', import.meta.url));
const running = new Set<Daemon>();

export interface LogLine {
  readonly level?: number;
  readonly msg?: string;
  readonly [k: string]: unknown;
}

export interface Daemon {
  readonly pid: number;
  readonly httpPort: number;
  /** stdout lines that parsed as JSON (pino), in order. */
  readonly logs: LogLine[];
  /** Resolves once the process has exited and its output is complete. */
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** Everything it wrote to stdout and stderr. */
  output(): string;
  /** The first log line matching (a `msg` substring or a predicate); the error carries the output's tail. */
  waitForLog(match: string | ((l: LogLine) => boolean), timeoutMs?: number): Promise<LogLine>;
  /** Polls GET /readyz until 200. */
  waitReady(timeoutMs?: number): Promise<void>;
  kill(signal?: NodeJS.Signals): void;
  /** SIGTERM, wait, SIGKILL after `graceMs`; resolves with the exit code. */
  stop(graceMs?: number): Promise<number | null>;
}

/**
 * A port for a daemon to listen on later, claimed for this test process (./ports.ts) so that no
 * test file running alongside picks it before the daemon binds it; checked free by binding it.
 */
export function freePort(): Promise<number> {
  return claimPort(
    (port) =>
      new Promise<boolean>((resolve) => {
        const srv = createServer();
        srv.once('error', () => resolve(false));
        srv.listen(port, '127.0.0.1', () => srv.close(() => resolve(true)));
      }),
  );
}

/** Run a one-shot command (`status`, `check`, `setup`, ...) and collect its output. */
export function runCli(args: string[], env: Record<string, string>): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [cli, ...args], { env: baseEnv(env), stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

/**
 * Deployment as the README prescribes: the tables' owner (the test database's superuser URL) runs
 * `setup`, and the daemon runs as a role with REPLICATION and SELECT only. Returns the daemon's
 * environment: `settings` with the role's URL.
 */
export async function setupAsOwner(
  db: { url: string; daemonRole(): Promise<{ url: string }> },
  settings: Record<string, string>,
): Promise<Record<string, string>> {
  await setupInProcess({ ...settings, PGWARREN_DATABASE_URL: db.url });
  const { url } = await db.daemonRole();
  return { ...settings, PGWARREN_DATABASE_URL: url };
}

/**
 * `pgwarren setup` with this environment, run by this process through the same code the CLI runs
 * (config/load.ts, commands/admin.ts). A fixture step, not the thing under test: spawning the CLI
 * for it cost about 0.6 s of CPU each, in over a hundred fixtures. The CLI's own `setup` is tested
 * through the binary (commands.test.ts and others).
 */
export async function setupInProcess(env: Record<string, string>): Promise<void> {
  const [{ loadConfig }, { setupCommand }] = await Promise.all([import('../../src/config/load.js'), import('../../src/commands/admin.js')]);
  const lines: string[] = [];
  try {
    const config = loadConfig({ flags: {}, env: baseEnv(env), cwd: process.cwd() });
    const code = await setupCommand(config, { replicaIdentityFull: false }, (line) => lines.push(line));
    if (code !== 0) throw new Error(`exit code ${code}`);
  } catch (err) {
    throw new Error(`setup failed: ${(err as Error).message}\n${lines.join('\n')}`);
  }
}

function baseEnv(env: Record<string, string>): NodeJS.ProcessEnv {
  // Every daemon declares a dead-letter exchange (default pgwarren.dead, shared by the whole
  // broker): a test's own is named after its exchange, and TestBroker.cleanup deletes it with it.
  const dead = env.PGWARREN_DEAD_LETTER_EXCHANGE === undefined && env.PGWARREN_EXCHANGE ? { PGWARREN_DEAD_LETTER_EXCHANGE: deadLetterExchangeOf(env.PGWARREN_EXCHANGE) } : {};
  return { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: process.env.HOME ?? '/tmp', ...dead, ...env };
}

export async function start(env: Record<string, string>): Promise<Daemon> {
  const httpPort = env.PGWARREN_HTTP_PORT ? Number(env.PGWARREN_HTTP_PORT) : await freePort();
  const child: ChildProcess = spawn(process.execPath, [cli, 'run'], {
    env: baseEnv({ PGWARREN_LOG_LEVEL: 'debug', ...env, PGWARREN_HTTP_PORT: String(httpPort) }),
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const logs: LogLine[] = [];
  const raw: string[] = [];
  const lines = (onLine: (line: string) => void) => {
    let pending = '';
    return {
      data(chunk: Buffer) {
        pending += chunk.toString('utf8');
        let nl: number;
        while ((nl = pending.indexOf('\n')) >= 0) {
          onLine(pending.slice(0, nl));
          pending = pending.slice(nl + 1);
        }
      },
      flush() {
        if (pending) onLine(pending);
        pending = '';
      },
    };
  };
  const out = lines((line) => {
    raw.push(line);
    try {
      logs.push(JSON.parse(line) as LogLine);
    } catch {
      /* not JSON: kept in the raw output only */
    }
  });
  const err = lines((line) => raw.push(line));
  child.stdout!.on('data', out.data);
  child.stderr!.on('data', err.data);
  // 'close', not 'exit': the output is complete only once both pipes have ended.
  let closed: { code: number | null; signal: NodeJS.Signals | null } | undefined;
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.on('close', (code, signal) => {
      out.flush();
      err.flush();
      resolve((closed = { code, signal }));
    }),
  );
  const tail = () => raw.slice(-40).join('\n');
  // Waiting on a daemon that has already exited would only burn the timeout.
  const alive = (what: string) => {
    if (closed) throw new Error(`${what}: the daemon exited (code ${closed.code}, signal ${closed.signal}); last output:\n${tail()}`);
    return false;
  };
  const daemon: Daemon = {
    pid: child.pid!,
    httpPort,
    logs,
    exited,
    output: () => raw.join('\n'),
    async waitForLog(match, timeoutMs = 15_000) {
      const test = typeof match === 'string' ? (l: LogLine) => typeof l.msg === 'string' && l.msg.includes(match) : match;
      let found: LogLine | undefined;
      const what = `no log line matching ${String(match)}`;
      await waitUntil(() => (found = logs.find(test)) ?? alive(what), { timeoutMs, message: () => `${what}; last output:\n${tail()}` });
      return found!;
    },
    async waitReady(timeoutMs = 20_000) {
      await waitUntil(
        async () => {
          try {
            if ((await fetch(`http://127.0.0.1:${httpPort}/readyz`)).status === 200) return true;
          } catch {
            /* not listening yet */
          }
          return alive('daemon not ready');
        },
        { timeoutMs, intervalMs: 200, message: () => `daemon not ready; last output:\n${tail()}` },
      );
    },
    kill(signal = 'SIGTERM') {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
    },
    async stop(graceMs = 20_000) {
      if (child.exitCode !== null || child.signalCode !== null) return child.exitCode;
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
      const { code } = await exited;
      clearTimeout(timer);
      return code;
    },
  };
  running.add(daemon);
  void exited.then(() => running.delete(daemon));
  return daemon;
}

/** Stop every daemon this test process started that is still running. */
export async function stopAll(graceMs = 5_000): Promise<void> {
  await Promise.all([...running].map((d) => d.stop(graceMs)));
}

// A test that fails half-way must not leave a daemon holding a slot.
after(() => stopAll());
// And if the test process itself is ended (the runner's per-file timeout sends SIGTERM), take the
// daemons along rather than leave them streaming while the next test file runs.
const killAll = () => {
  for (const d of running) d.kill('SIGKILL');
};
process.on('exit', killAll);
for (const sig of ['SIGTERM', 'SIGINT'] as const) {
  process.once(sig, () => {
    killAll();
    process.kill(process.pid, sig); // no listener left: the default action ends the process
  });
}
