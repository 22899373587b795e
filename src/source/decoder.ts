import type { Decoded, Plugin } from '../types.js';

/**
 * What each output plugin's decoder provides. `parse` runs synchronously as bytes arrive (the
 * library's buffer is reused afterwards, so it must copy what it keeps); `decode` runs in stream
 * order with backpressure and may await catalog look-ups before it yields plugin-blind changes.
 */
export interface Decoder<Parsed = unknown> {
  readonly plugin: Plugin;
  /** Options for START_REPLICATION ... LOGICAL lsn (options). */
  startOptions(): string[];
  parse(payload: Buffer): Parsed;
  decode(parsed: Parsed): Decoded[] | Promise<Decoded[]>;
}

/** Quote a value for START_REPLICATION's option list. */
export function optionLiteral(value: string): string {
  return `'${value.replace(/'/g, "''")}'`;
}

/** Quote an identifier (slot, publication, table) for SQL. */
export function quoteIdent(name: string): string {
  return `"${name.replace(/"/g, '""')}"`;
}
