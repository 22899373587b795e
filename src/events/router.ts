/**
 * Where an event goes: exchange, routing key and per-message expiry. Defaults come from the
 * options; per-table rules (config file) override them for the tables their glob matches. The
 * first matching rule wins. Decisions are cached per table.
 */
import { globMatches, parseTableGlob, tableKey, type TableGlob, type TableKey } from '../shared/table-name.js';
import { compileRoutingKey, type RoutingKeyFn } from './routing.js';

export interface RouteRule {
  readonly match: string;
  readonly exchange?: string;
  readonly routingKey?: string;
  /** AMQP expiration in milliseconds. */
  readonly ttl?: number;
}

export interface TableRoute {
  readonly exchange: string;
  readonly routingKey: RoutingKeyFn;
  readonly expiration: string | undefined;
}

export class Router {
  private readonly cache = new Map<TableKey, TableRoute>();
  private readonly rules: Array<{ glob: TableGlob; route: TableRoute }>;
  private readonly fallback: TableRoute;

  constructor(defaults: { exchange: string; routingKey: string }, rules: readonly RouteRule[] = []) {
    this.fallback = { exchange: defaults.exchange, routingKey: compileRoutingKey(defaults.routingKey), expiration: undefined };
    this.rules = rules.map((r) => ({
      glob: parseTableGlob(r.match),
      route: {
        exchange: r.exchange ?? defaults.exchange,
        routingKey: compileRoutingKey(r.routingKey ?? defaults.routingKey),
        expiration: r.ttl === undefined ? undefined : String(r.ttl),
      },
    }));
  }

  /** Every exchange some table may be routed to (declared at session start). */
  exchanges(): string[] {
    return [...new Set([this.fallback.exchange, ...this.rules.map((r) => r.route.exchange)])];
  }

  /** The route of events that belong to no table (application and commit events): the defaults. */
  defaultRoute(): TableRoute {
    return this.fallback;
  }

  forTable(schema: string, table: string): TableRoute {
    const key = tableKey(schema, table);
    let route = this.cache.get(key);
    if (!route) {
      route = this.rules.find((r) => globMatches(r.glob, schema, table))?.route ?? this.fallback;
      this.cache.set(key, route);
    }
    return route;
  }
}
