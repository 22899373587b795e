/**
 * Small, targeted fixes to rabbitmq-stream-js-client (1.0.0, also 0.4.x), installed once per
 * process by `installStreamCompat`: RabbitMQ 3.9/3.10 compatibility (below), a refused login that
 * must reject the connect attempt instead of crashing the process, and frame writes without a
 * per-frame debug string. Each is described where it is installed.
 *
 * RabbitMQ 3.9/3.10 compatibility.
 *
 * The client opens every connection with ExchangeCommandVersions (stream protocol command 0x001b),
 * which RabbitMQ added in 3.11. A 3.9/3.10 broker does not know the command and answers by
 * closing the connection, so without this nothing connects. The server's version is known before
 * that request (the PeerProperties exchange returns it), so the request is skipped when the
 * server is older than 3.11: the client then assumes version 1 of every command, which is what
 * those brokers speak (the client already limits itself to v1 publish/deliver below 3.11).
 * On 3.11 and later (and when the version is unknown) the client's own code runs unchanged.
 *
 * The client's partitions and route queries (super streams) fail on 3.10 as well; pgwarren does
 * not use them: it declares the super-stream topology over AMQP and routes partitions itself.
 */
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);

/** True when the broker of this version understands ExchangeCommandVersions (3.11+). */
export function serverKnowsCommandVersions(version: string | undefined): boolean {
  const m = /^(\d+)\.(\d+)/.exec(String(version ?? '').trim());
  if (!m) return true; // unknown: behave exactly as the client does
  const major = Number(m[1]);
  const minor = Number(m[2]);
  return major > 3 || (major === 3 && minor >= 11);
}

interface Command {
  toBuffer(params: unknown): Buffer;
}

interface ConnectionProto {
  peerProperties?: Record<string, string>;
  socket?: { destroy(err?: Error): void; readyState?: string; write(b: Buffer, cb: (err?: Error | null) => void): boolean };
  getBufferSizeParams(this: ConnectionProto): unknown;
  send(this: ConnectionProto, cmd: Command): Promise<void>;
  exchangeCommandVersions(this: ConnectionProto): Promise<boolean>;
  auth(this: ConnectionProto, params: unknown): Promise<unknown>;
  __pgwarrenCompat?: boolean;
}

/** errno-like code of the error a refused stream login ends the connection attempt with. */
export const STREAM_AUTH_FAILED = 'PGWARREN_STREAM_AUTH_FAILED';

/** Patch the client's Connection once per process (idempotent). Returns whether it patched now. */
export function installStreamCompat(): boolean {
  const mod = require('rabbitmq-stream-js-client/dist/connection.js') as { Connection: { prototype: ConnectionProto } };
  const proto = mod.Connection.prototype;
  if (proto.__pgwarrenCompat) return false;
  const original = proto.exchangeCommandVersions;
  if (typeof original !== 'function') throw new Error('rabbitmq-stream-js-client: Connection.exchangeCommandVersions not found (unsupported client version)');
  proto.exchangeCommandVersions = function (this: ConnectionProto): Promise<boolean> {
    if (!serverKnowsCommandVersions(this.peerProperties?.version)) return Promise.resolve(true);
    return original.call(this);
  };
  // The client authenticates inside an async socket listener, so a refused login becomes an
  // unhandled rejection (which ends the process) while the connect promise never settles. Turn
  // it into a socket error, which rejects the connect promise with a code pgwarren classifies.
  const auth = proto.auth;
  proto.auth = function (this: ConnectionProto, params: unknown): Promise<unknown> {
    return auth.call(this, params).catch((err: unknown) => {
      const e = Object.assign(new Error(`stream login refused: ${err instanceof Error ? err.message : String(err)}`), { code: STREAM_AUTH_FAILED });
      this.socket?.destroy(e);
      return new Promise<never>(() => undefined);
    });
  };
  // Every frame written (a publish frame holds many messages) is first turned into a debug line
  // holding `inspect(body.toJSON())`, whatever the log level: an array of one number per byte of
  // the frame, built and thrown away for each frame. The same write, without that line. Only
  // applied to the version of `send` this was written against (recognised by that expression).
  const send = proto.send;
  if (typeof send === 'function' && String(send).includes('inspect)(body.toJSON())')) {
    proto.send = function (this: ConnectionProto, cmd: Command): Promise<void> {
      return new Promise((resolve, reject) => {
        const body = cmd.toBuffer(this.getBufferSizeParams());
        // As the client does: nothing is written to a socket that is no longer open.
        if (this.socket?.readyState === 'open') this.socket.write(body, (err) => (err ? reject(err) : resolve()));
      });
    };
  }
  proto.__pgwarrenCompat = true;
  return true;
}
