/**
 * Snapshot progress in /metrics, per snapshot id: rows and chunks published (confirmed), rate and
 * ETA. Registered once per process registry (sessions come and go, the gauges stay); a finished
 * snapshot's series are removed so /metrics does not grow with history (`snapshot --list` keeps it).
 */
import { Gauge } from 'prom-client';
import type { Metrics } from '../ops/metrics.js';

export interface SnapshotMetrics {
  progress(id: number, p: { rows: number; chunks: number; startedMs: number; estimate: number | null }): void;
  finished(id: number): void;
}

const byRegistry = new WeakMap<Metrics, SnapshotMetrics>();

export function snapshotMetrics(metrics: Metrics): SnapshotMetrics {
  let m = byRegistry.get(metrics);
  if (m) return m;
  const registers = [metrics.registry];
  const labelNames = ['snapshot'] as const;
  const rows = new Gauge({ name: 'pgwarren_snapshot_rows', help: 'Rows of a running snapshot published and confirmed so far.', labelNames, registers });
  const chunks = new Gauge({ name: 'pgwarren_snapshot_chunks', help: 'Chunks of a running snapshot confirmed so far.', labelNames, registers });
  const rate = new Gauge({ name: 'pgwarren_snapshot_rows_per_second', help: 'Rows per second of a running snapshot since it started.', labelNames, registers });
  const eta = new Gauge({
    name: 'pgwarren_snapshot_eta_seconds',
    help: "Seconds a running snapshot still needs at its rate, from the planner's row estimate (absent when unknown).",
    labelNames,
    registers,
  });
  const running = new Gauge({ name: 'pgwarren_snapshots_running', help: 'Snapshots this instance is running (0 or 1).', registers });
  const live = new Set<string>();
  m = {
    progress(id, p) {
      const l = String(id);
      live.add(l);
      running.set(1);
      rows.set({ snapshot: l }, p.rows);
      chunks.set({ snapshot: l }, p.chunks);
      const secs = (Date.now() - p.startedMs) / 1000;
      const r = secs > 0 ? p.rows / secs : 0;
      rate.set({ snapshot: l }, r);
      if (p.estimate !== null && r > 0) eta.set({ snapshot: l }, Math.max(0, p.estimate - p.rows) / r);
    },
    finished(id) {
      const l = String(id);
      live.delete(l);
      for (const g of [rows, chunks, rate, eta]) g.remove({ snapshot: l });
      running.set(live.size > 0 ? 1 : 0);
    },
  };
  byRegistry.set(metrics, m);
  return m;
}
