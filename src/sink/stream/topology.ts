/**
 * The super-stream topology, declared over AMQP so that it works on RabbitMQ 3.10 (whose stream
 * protocol has no CreateSuperStream) exactly as on 3.11+ (where `rabbitmq-streams
 * add_super_stream` and the client's createSuperStream build the same thing): a durable direct
 * exchange named after the super stream, argument `x-super-stream: true`, with one stream per
 * partition (`<stream>-0` .. `<stream>-N-1`) bound by routing key `"0"` .. `"N-1"` with binding
 * argument `x-stream-partition-order` = the partition's number. 3.11+ super-stream consumers
 * find the partitions through those bindings. The streams themselves are declared over the
 * stream protocol (with the retention arguments) before this runs.
 */
import type { ChannelModel } from 'amqplib';
import type { Logger } from '../../ops/logger.js';
import { SinkError, errorText } from '../amqp-sink.js';
import { closeAmqp, connectAmqp, type AmqpTls } from '../amqp-connect.js';

export function partitionNames(stream: string, partitions: number): string[] {
  if (partitions <= 1) return [stream];
  return Array.from({ length: partitions }, (_, i) => `${stream}-${i}`);
}

export interface SuperStreamDeclaration {
  readonly urls: readonly string[];
  readonly stream: string;
  readonly partitions: readonly string[];
  readonly timeoutMs: number;
  readonly heartbeatSeconds: number;
  /** PGWARREN_AMQP_CA/CERT/KEY, as for the AMQP sink. */
  readonly tls?: AmqpTls;
  readonly log: Logger;
}

export async function declareSuperStream(d: SuperStreamDeclaration): Promise<void> {
  let lastError: unknown;
  for (const url of d.urls) {
    let model: ChannelModel | undefined;
    const timer = setTimeout(() => void (model && closeAmqp(model)), d.timeoutMs);
    try {
      model = await connectAmqp(url, { tls: d.tls, timeoutMs: d.timeoutMs, heartbeatSeconds: d.heartbeatSeconds, connectionName: 'pgwarren-topology' });
      model.on('error', () => undefined);
      const ch = await model.createChannel();
      ch.on('error', () => undefined);
      await ch.assertExchange(d.stream, 'direct', { durable: true, arguments: { 'x-super-stream': true } });
      for (let i = 0; i < d.partitions.length; i++) {
        // The streams exist already; a passive check makes a missing one an error here.
        await ch.checkQueue(d.partitions[i]!);
        await ch.bindQueue(d.partitions[i]!, d.stream, String(i), { 'x-stream-partition-order': i });
      }
      await closeAmqp(model);
      d.log.debug({ superStream: d.stream, partitions: d.partitions.length }, 'super-stream topology declared');
      return;
    } catch (err) {
      lastError = err;
      if (model) await closeAmqp(model);
    } finally {
      clearTimeout(timer);
    }
  }
  throw new SinkError(
    `declaring super stream ${d.stream} (exchange and bindings over AMQP, PGWARREN_AMQP_URL) failed: ${errorText(lastError)}`,
    'transient',
    { cause: lastError },
  );
}
