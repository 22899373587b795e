/**
 * The tests' own port claims (test/support/ports.ts). The defect: a fault proxy that was `down`
 * (listener closed, to refuse connections) could not reopen its port, because a test file running
 * alongside had picked the same, momentarily free, port (EADDRINUSE in the fault matrix's
 * "connecting | postgres | refuse" cell). Here the other file is a child process asking for that
 * very port.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import net from 'node:net';
import { fileURLToPath } from 'node:url';
import { startFaultProxy } from '../support/fault-proxy.js';
import { claimPort } from '../support/ports.js';

const faultProxy = fileURLToPath(new URL('../support/fault-proxy.ts', import.meta.url));
const ports = fileURLToPath(new URL('../support/ports.ts', import.meta.url));

/** Runs `body` (an ES module text) in a child node process; resolves with its stdout lines as they come. */
function child(body: string) {
  const proc = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', body], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  proc.stdout.on('data', (d) => (out += d));
  proc.stderr.on('data', (d) => (err += d));
  const exited = new Promise<number | null>((resolve) => proc.on('close', (code) => resolve(code)));
  const firstLine = new Promise<string>((resolve, reject) => {
    proc.stdout.on('data', () => {
      if (out.includes('\n')) resolve(out.split('\n')[0]!);
    });
    proc.on('close', () => reject(new Error(`child ended without output: ${err}`)));
  });
  return { proc, exited, firstLine, stderr: () => err };
}

function refused(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1');
    s.once('connect', () => {
      s.destroy();
      resolve(false);
    });
    s.once('error', (e: NodeJS.ErrnoException) => resolve(e.code === 'ECONNREFUSED'));
  });
}

test("a down fault proxy's port is not given to another test process, and the proxy reopens on it", async () => {
  const target = net.createServer((s) => s.end());
  await new Promise<void>((r) => target.listen(0, '127.0.0.1', r));
  const proxy = await startFaultProxy({ host: '127.0.0.1', port: (target.address() as net.AddressInfo).port });
  try {
    await proxy.down();
    assert.equal(await refused(proxy.port), true, 'down: connections are refused');
    // Another test file's proxy asks for exactly this port while nothing listens on it.
    const other = child(
      `import { startFaultProxy } from ${JSON.stringify(faultProxy)};
       const p = await startFaultProxy({ host: '127.0.0.1', port: 1 }, { preferPorts: [${proxy.port}] });
       console.log(p.port); await p.close();`,
    );
    const otherPort = Number(await other.firstLine);
    assert.equal(await other.exited, 0, other.stderr());
    assert.notEqual(otherPort, proxy.port, 'the other process got a port of its own');
    await proxy.accept();
    assert.equal(await refused(proxy.port), false, 'the proxy listens on its port again');
  } finally {
    await proxy.close();
    target.close();
  }
});

test('a claim ends with its process: at exit, and when the process is killed', async () => {
  for (const how of ['exit', 'SIGKILL'] as const) {
    const holder = child(
      `import { claimPort } from ${JSON.stringify(ports)};
       console.log(await claimPort(async () => true));
       ${how === 'exit' ? '' : 'setInterval(() => {}, 1000);'}`,
    );
    const port = Number(await holder.firstLine);
    if (how === 'SIGKILL') {
      // While the holder lives, its port is not available to this process.
      assert.notEqual(await claimPort(async () => true, [port]), port);
      holder.proc.kill('SIGKILL');
    }
    await holder.exited;
    assert.equal(await claimPort(async () => true, [port]), port, `the port is free to claim after the holder's ${how}`);
  }
});
