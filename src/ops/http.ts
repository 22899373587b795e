/**
 * Health and metrics endpoints. /healthz answers while the process runs; /readyz only while a
 * session streams with both connections up and the broker not blocking; /metrics is Prometheus
 * text from the process registry.
 */
import { createServer, type Server } from 'node:http';
import type { Registry } from 'prom-client';
import type { Logger } from './logger.js';

export interface Readiness {
  ready(): boolean;
  readonly state: string;
  /** Optional longer text for the /readyz body (why it is not ready). */
  reason?(): string;
}

export async function startHttp(port: number, deps: { registry: Registry; readiness: Readiness; log: Logger }): Promise<Server | null> {
  if (port === 0) return null;
  const server = createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0];
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { allow: 'GET, HEAD' }).end();
      return;
    }
    if (path === '/healthz') {
      res.writeHead(200, { 'content-type': 'text/plain' }).end('ok\n');
    } else if (path === '/readyz') {
      const ready = deps.readiness.ready();
      res.writeHead(ready ? 200 : 503, { 'content-type': 'text/plain' }).end(`${ready ? 'ready' : 'not ready'}: ${deps.readiness.reason?.() ?? deps.readiness.state}\n`);
    } else if (path === '/metrics') {
      deps.registry.metrics().then(
        (text) => res.writeHead(200, { 'content-type': deps.registry.contentType }).end(text),
        (err: Error) => res.writeHead(500, { 'content-type': 'text/plain' }).end(`metrics failed: ${err.message}\n`),
      );
    } else {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('not found: try /healthz, /readyz or /metrics\n');
    }
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, () => {
      server.off('error', reject);
      resolve();
    });
  });
  server.on('error', (err) => deps.log.error({ err: err.message }, 'http server error'));
  deps.log.info({ port }, 'health and metrics listening');
  return server;
}
