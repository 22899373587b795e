/**
 * Ports the tests listen on themselves (fault proxies) or hand to a daemon to listen on later
 * (PGWARREN_HTTP_PORT). They come from 20000-32000, below the kernel's ephemeral range
 * (32768-60999 here), so no outgoing connection on the machine takes one in between.
 *
 * Test files run side by side, and a port that is merely free now is not safe: a fault proxy
 * that is `down` has closed its listener and must get the same port back, and a daemon binds its
 * HTTP port a moment after the pick. So every pick is a claim, made machine-wide by creating
 * `pgwarren-test-ports/<port>` in the machine's temporary directory exclusively; the file names
 * the claiming process and is removed when that process ends. A claim whose process is gone
 * (kill -9) is taken over.
 */
import { mkdirSync, openSync, closeSync, readFileSync, readdirSync, rmdirSync, unlinkSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export const PORT_RANGE = { from: 20_000, to: 32_000 } as const;

// Machine-wide: scripts/test.mjs gives each run a TMPDIR of its own, and names the shared one.
const dir = join(process.env.PGWARREN_TEST_MACHINE_TMP || tmpdir(), 'pgwarren-test-ports');
const mine = new Set<number>();

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

function tryCreate(port: number): boolean {
  const file = join(dir, String(port));
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      const fd = openSync(file, 'wx');
      writeSync(fd, String(process.pid));
      closeSync(fd);
      return true;
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      // Another process removed the (empty) directory as it ended: make it again.
      if (code === 'ENOENT') {
        mkdirSync(dir, { recursive: true });
        continue;
      }
      if (code !== 'EEXIST') throw err;
      let owner = NaN;
      try {
        owner = Number(readFileSync(file, 'utf8'));
      } catch {
        continue; // released just now: try again
      }
      // A file without a pid yet is being written by its claimer: it is taken.
      if (!Number.isInteger(owner) || owner <= 0 || alive(owner)) return false;
      try {
        unlinkSync(file); // the claimer died without releasing it
      } catch {
        /* someone else took it over first */
      }
    }
  }
  return false;
}

function release(port: number): void {
  mine.delete(port);
  try {
    unlinkSync(join(dir, String(port)));
  } catch {
    /* already gone */
  }
}

function releaseAll(): void {
  for (const port of [...mine]) release(port);
  try {
    if (readdirSync(dir).length === 0) rmdirSync(dir);
  } catch {
    /* not empty after all, or gone: another run's claims, or nothing to remove */
  }
}

let exitHook = false;

/**
 * Claims the first port, from `preferred` then random ones in PORT_RANGE, that no other test
 * process has claimed and that `usable` accepts (it tries to bind it); the claim lasts until this
 * process ends, whatever the test does with the port meanwhile.
 */
export async function claimPort(usable: (port: number) => Promise<boolean>, preferred: readonly number[] = []): Promise<number> {
  if (!exitHook) {
    exitHook = true;
    process.on('exit', releaseAll);
  }
  mkdirSync(dir, { recursive: true });
  const random = () => PORT_RANGE.from + Math.floor(Math.random() * (PORT_RANGE.to - PORT_RANGE.from));
  for (let attempt = 0; attempt < preferred.length + 200; attempt++) {
    const port = preferred[attempt] ?? random();
    if (mine.has(port) || !tryCreate(port)) continue;
    mine.add(port);
    if (await usable(port)) return port;
    release(port); // something outside the tests listens there: leave the port alone
  }
  throw new Error(`no free port between ${PORT_RANGE.from} and ${PORT_RANGE.to} that another test process has not claimed`);
}
