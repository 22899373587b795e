/**
 * TLS for the tests, all on loopback: a throwaway CA made with openssl in a temp dir (server
 * certificate for `localhost` only, a client certificate, and an unrelated second CA), a private
 * Postgres cluster with ssl=on, and a TLS-terminating TCP proxy for RabbitMQ, whose own broker
 * has no TLS listener and is left alone.
 */
import { execFileSync } from 'node:child_process';
import { chmodSync, chownSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir, userInfo } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL, fileURLToPath } from 'node:url';
import tls from 'node:tls';

export interface TestPki {
  readonly dir: string;
  /** CA that signed the server and client certificates. */
  readonly caCert: string;
  /** A second, unrelated CA: verification against it must fail. */
  readonly otherCaCert: string;
  /** Server certificate valid for the name `localhost` only (not for 127.0.0.1). */
  readonly serverCert: string;
  readonly serverKey: string;
  readonly clientCert: string;
  readonly clientKey: string;
  /** Removes the directory. */
  cleanup(): void;
}

function openssl(dir: string, args: string[]): void {
  execFileSync('openssl', args, { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] });
}

/** EC keys: fast to make, accepted by Postgres, RabbitMQ-side node:tls and the daemon alike. */
function makeCa(dir: string, name: string, cn: string): void {
  openssl(dir, [
    'req', '-x509', '-new', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
    '-keyout', `${name}.key`, '-out', `${name}.crt`, '-days', '2', '-subj', `/CN=${cn}`,
    '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign',
  ]);
}

function makeLeaf(dir: string, name: string, cn: string, ext: string): void {
  writeFileSync(join(dir, `${name}.ext`), ext);
  openssl(dir, ['req', '-new', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', `${name}.key`, '-out', `${name}.csr`, '-subj', `/CN=${cn}`]);
  openssl(dir, ['x509', '-req', '-in', `${name}.csr`, '-CA', 'ca.crt', '-CAkey', 'ca.key', '-CAcreateserial', '-out', `${name}.crt`, '-days', '2', '-extfile', `${name}.ext`]);
}

export function createTestPki(): TestPki {
  const dir = mkdtempSync(join(tmpdir(), 'pgwarren-tls-'));
  try {
    makeCa(dir, 'ca', 'pgwarren test CA');
    makeCa(dir, 'other-ca', 'pgwarren unrelated CA');
    makeLeaf(dir, 'server', 'localhost', 'subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n');
    makeLeaf(dir, 'client', 'pgwarren', 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n');
  } catch (err) {
    rmSync(dir, { recursive: true, force: true });
    const e = err as { stderr?: Buffer; message: string };
    throw new Error(`openssl failed: ${e.stderr?.toString() || e.message}`);
  }
  const p = (f: string) => join(dir, f);
  return {
    dir,
    caCert: p('ca.crt'),
    otherCaCert: p('other-ca.crt'),
    serverCert: p('server.crt'),
    serverKey: p('server.key'),
    clientCert: p('client.crt'),
    clientKey: p('client.key'),
    cleanup: () => rmSync(dir, { recursive: true, force: true }),
  };
}

export interface TlsCluster {
  readonly port: number;
  /** Superuser URL of the `postgres` database, without TLS parameters. */
  readonly url: string;
  stop(): void;
}

/**
 * A second private cluster (scripts/pg-cluster.mjs) with ssl=on and the PKI's server certificate.
 * Postgres reads the key as the `postgres` OS user when the tests run as root, and wants it 0600.
 */
export async function startTlsCluster(pki: TestPki): Promise<TlsCluster> {
  const dir = mkdtempSync(join(tmpdir(), 'pgwarren-pgtls-'));
  const cert = join(dir, 'server.crt');
  const key = join(dir, 'server.key');
  writeFileSync(cert, readFileSync(pki.serverCert));
  writeFileSync(key, readFileSync(pki.serverKey), { mode: 0o600 });
  chmodSync(dir, 0o755);
  if (userInfo().uid === 0) {
    const id = (flag: string) => Number(execFileSync('id', [flag, 'postgres'], { encoding: 'utf8' }).trim());
    for (const f of [dir, cert, key]) chownSync(f, id('-u'), id('-g'));
  }
  const script = pathToFileURL(fileURLToPath(new URL('../../scripts/pg-cluster.mjs', import.meta.url))).href;
  const { startCluster } = (await import(script)) as {
    startCluster(settings: Record<string, string>): Promise<{ url: string; port: number; stop(): void }>;
  };
  try {
    const cluster = await startCluster({ ssl: 'on', ssl_cert_file: cert, ssl_key_file: key, max_connections: '30' });
    return {
      port: cluster.port,
      url: cluster.url,
      stop() {
        cluster.stop();
        rmSync(dir, { recursive: true, force: true });
      },
    };
  } catch (err) {
    rmSync(dir, { recursive: true, force: true });
    throw err;
  }
}

export interface TlsProxy {
  readonly port: number;
  /** TLS handshakes the proxy completed. */
  handshakes(): number;
  /** Errors of handshakes that failed (e.g. a client without a certificate). */
  readonly handshakeErrors: string[];
  close(): Promise<void>;
}

/**
 * Terminates TLS with the PKI's server certificate and forwards the plaintext to `target`.
 * With `requireClientCert`, only clients presenting a certificate of the PKI's CA get through.
 */
export async function startTlsProxy(pki: TestPki, target: { host: string; port: number }, opts: { requireClientCert?: boolean } = {}): Promise<TlsProxy> {
  const sockets = new Set<net.Socket>();
  const handshakeErrors: string[] = [];
  let handshakes = 0;
  const server = tls.createServer(
    {
      key: readFileSync(pki.serverKey),
      cert: readFileSync(pki.serverCert),
      ca: readFileSync(pki.caCert),
      requestCert: opts.requireClientCert === true,
      rejectUnauthorized: opts.requireClientCert === true,
    },
    (client) => {
      handshakes++;
      const upstream = net.connect(target);
      sockets.add(client);
      sockets.add(upstream);
      const end = () => {
        client.destroy();
        upstream.destroy();
        sockets.delete(client);
        sockets.delete(upstream);
      };
      client.on('error', end).on('close', end);
      upstream.on('error', end).on('close', end);
      client.pipe(upstream);
      upstream.pipe(client);
    },
  );
  server.on('tlsClientError', (err) => handshakeErrors.push(err.message));
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    port: (server.address() as net.AddressInfo).port,
    handshakes: () => handshakes,
    handshakeErrors,
    async close() {
      for (const s of sockets) s.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
