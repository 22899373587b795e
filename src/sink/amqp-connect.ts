/**
 * Opening one RabbitMQ connection, the single way both `run` (the AMQP sink, the stream sink's
 * topology) and `check` do it, so a broker `run` reaches is one `check` reaches: the heartbeat
 * (PGWARREN_BROKER_HEARTBEAT), the TLS material of PGWARREN_AMQP_CA/CERT/KEY, and amqplib's
 * handshake timeout.
 * Classifying a failed connect is the caller's (README: Failure handling).
 */
import { readFileSync } from 'node:fs';
import amqp, { type ChannelModel } from 'amqplib';
import { closeWithin } from '../ops/close.js';
import { exposeHandshakeReplyCodes } from './amqp-handshake.js';
import { withHeartbeat } from './heartbeat.js';

exposeHandshakeReplyCodes();

/** Files named by PGWARREN_AMQP_CA, PGWARREN_AMQP_CERT and PGWARREN_AMQP_KEY. */
export interface AmqpTls {
  readonly ca?: string;
  readonly cert?: string;
  readonly key?: string;
}

export interface AmqpConnectOptions {
  readonly tls?: AmqpTls;
  /**
   * amqplib's socket idle timeout, active until the handshake completes: a peer that accepts TCP
   * and says nothing is dropped (and its socket destroyed) by amqplib itself.
   */
  readonly timeoutMs: number;
  /** PGWARREN_BROKER_HEARTBEAT: used unless the URL names its own `heartbeat=`. */
  readonly heartbeatSeconds: number;
  /** Shown in the broker's management UI. */
  readonly connectionName?: string;
}

export function connectAmqp(url: string, options: AmqpConnectOptions): Promise<ChannelModel> {
  return amqp.connect(withHeartbeat(url, options.heartbeatSeconds), {
    ...tlsSocketOptions(options.tls),
    clientProperties: { connection_name: options.connectionName ?? 'pgwarren' },
    timeout: options.timeoutMs,
  });
}

/** Close a connection, bounded like every close; its socket is destroyed if the close hangs. */
export async function closeAmqp(model: ChannelModel): Promise<void> {
  const connection = (model as unknown as { connection?: { stream?: { destroy(): void } } }).connection;
  await closeWithin(() => model.close(), () => connection);
}

function tlsSocketOptions(tls: AmqpTls | undefined): Record<string, unknown> {
  if (!tls) return {};
  const out: Record<string, unknown> = {};
  if (tls.ca) out.ca = [readFileSync(tls.ca)];
  if (tls.cert) out.cert = readFileSync(tls.cert);
  if (tls.key) out.key = readFileSync(tls.key);
  return out;
}
