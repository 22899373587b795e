/**
 * amqplib reports a broker that closes the connection during the opening handshake (wrong
 * password: 403 ACCESS_REFUSED; unknown virtual host: 530 NOT_ALLOWED) as a plain Error whose
 * text alone carries the reply code, and for a refused virtual host not even that ("Expected
 * ConnectionOpenOk; got <ConnectionClose channel:0>"). Faults are classified by code (README
 * "Failure handling"), so this module gives those errors the `code`, `classId` and `methodId` amqplib already
 * puts on channel errors: it watches the frames of the handshake (amqplib 2.x reads them with
 * `Connection#step`, and only there) and copies the fields of a Connection.Close onto the error
 * the handshake fails with.
 *
 * If amqplib's internals ever change shape, nothing is patched: such errors then carry no code
 * and are retried as transient, which the integration tests (wrong password -> exit 3) catch.
 */
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';

interface Frame {
  readonly id?: number;
  readonly fields?: { replyCode?: unknown; classId?: unknown; methodId?: unknown };
}
type StepCallback = (err: Error | null, frame: Frame | null) => void;
type OpenCallback = (err: Error | null, ok?: unknown) => void;
interface ConnectionProto {
  open(fields: unknown, cb?: OpenCallback): unknown;
  step(cb: StepCallback): unknown;
}

let installed = false;

export function exposeHandshakeReplyCodes(): void {
  if (installed) return;
  installed = true;
  try {
    const require = createRequire(import.meta.url);
    // The package's `exports` hide lib/: resolve its entry point and load the files beside it,
    // which are the very modules amqplib itself uses (same paths, same module cache entries).
    const root = dirname(require.resolve('amqplib'));
    const { Connection } = require(join(root, 'lib', 'connection.js')) as { Connection?: { prototype: ConnectionProto } };
    const defs = require(join(root, 'lib', 'defs.js')) as { ConnectionClose?: unknown };
    const proto = Connection?.prototype;
    const closeId = defs.ConnectionClose;
    if (!proto || typeof proto.open !== 'function' || typeof proto.step !== 'function' || typeof closeId !== 'number') return;
    const open = proto.open;
    proto.open = function (this: ConnectionProto, fields: unknown, cb?: OpenCallback) {
      let close: Frame['fields'] | undefined;
      const step = this.step;
      // Shadow `step` on this connection for the handshake only.
      this.step = function (this: ConnectionProto, k: StepCallback) {
        return step.call(this, (err, frame) => {
          if (frame && frame.id === closeId) close = frame.fields;
          k(err, frame);
        });
      };
      return open.call(this, fields, (err, ok) => {
        delete (this as Partial<ConnectionProto>).step;
        if (err && close && (err as { code?: unknown }).code === undefined) {
          Object.assign(err, { code: close.replyCode, classId: close.classId, methodId: close.methodId });
        }
        cb?.(err, ok);
      });
    };
  } catch {
    // Not the amqplib this was written for: leave it alone (see above).
  }
}
