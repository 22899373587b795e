/**
 * `pgwarren run`: the daemon. Starts the HTTP endpoints, supervises sessions until SIGTERM or
 * SIGINT (see ops/shutdown.ts), then drains and exits 0.
 */
import type { Config } from '../config/load.js';
import { describeConfig } from '../config/load.js';
import { createLogger } from '../ops/logger.js';
import { Metrics } from '../ops/metrics.js';
import { startHttp } from '../ops/http.js';
import { SlotMonitor } from '../source/slot-monitor.js';
import { Heartbeat } from '../source/heartbeat.js';
import { Supervisor } from '../pipeline/supervisor.js';
import { PrerequisiteError, UsageError } from '../errors.js';
import { loadTransform, type TransformFn } from '../pipeline/transform.js';
import { onShutdown } from '../ops/shutdown.js';
import { limitHeapGrowth } from '../ops/heap.js';
import { pgConfig, pgTimeouts, sessionSettings } from './settings.js';

export async function runCommand(config: Config): Promise<number> {
  limitHeapGrowth();
  const log = createLogger(config.logLevel, { stderr: config.sink === 'stdout' });
  const metrics = new Metrics();
  log.info({ config: describeConfig(config) }, 'starting pgwarren');

  let transform: TransformFn | null = null;
  if (config.transform) {
    try {
      transform = await loadTransform(config.transform);
    } catch (err) {
      log.fatal({ err: (err as Error).message }, (err as Error).message);
      return 2;
    }
  }
  const supervisor = new Supervisor(sessionSettings(config, transform), {
    log,
    metrics,
    reconnectMaxDelaySeconds: config.reconnectMaxDelay,
  });
  let http;
  try {
    http = await startHttp(config.httpPort, { registry: metrics.registry, readiness: supervisor, log });
  } catch (err) {
    log.fatal({ port: config.httpPort, err: (err as Error).message }, 'cannot listen for health and metrics; set PGWARREN_HTTP_PORT to a free port or 0');
    return 2;
  }
  const monitor = new SlotMonitor({
    pg: pgConfig(config),
    timeouts: pgTimeouts(config),
    slot: config.slot,
    // As often as positions are reported, at most every 10 s: lag changes no faster than that.
    intervalMs: Math.min(10, config.statusInterval) * 1000,
    lagWarnBytes: config.lagWarnBytes,
    metrics,
    log,
  });
  monitor.start();
  const heartbeat = new Heartbeat({ pg: pgConfig(config), timeouts: pgTimeouts(config), intervalMs: config.heartbeatInterval * 1000, log });
  heartbeat.start();

  onShutdown((signal) => {
    log.info({ signal }, 'shutdown requested: draining outstanding confirms');
    supervisor.stop();
  });

  let code = 0;
  try {
    await supervisor.run();
  } catch (err) {
    if (err instanceof PrerequisiteError) {
      log.fatal({ err: err.message }, err.message);
      code = 3;
    } else if (err instanceof UsageError) {
      // A configuration error only the database could reveal (a row filter that does not fit a table).
      log.fatal({ err: err.message }, err.message);
      code = 2;
    } else {
      log.fatal({ err }, 'unexpected error');
      code = 1;
    }
  } finally {
    await Promise.all([monitor.stop(), heartbeat.stop()]);
    await new Promise<void>((resolve) => {
      if (!http) return resolve();
      http.close(() => resolve());
      http.closeAllConnections();
    });
  }
  return code;
}
