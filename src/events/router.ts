/**
 * Where an event goes: exchange, routing key and per-message expiry. Defaults come from the
 * options; per-table rules (config file) override them for the tables their glob matches. The
 * first matching rule wins.
 *
 * The router holds the one cache of routing decisions: a `Route` per table and op (and per fixed
 * routing key), with its routing key expanded and checked once. It hands out the same object for
 * the same route, so sinks may cache what they derive from it (headers) by identity.
 */
import { globMatches, parseTableGlob, type TableGlob } from '../shared/table-name.js';
import { compileRoutingKey, ROUTING_KEY_MAX_BYTES, type RoutingKeyFn } from './routing.js';

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

/** The routing decision for the events of one table and op (or one fixed routing key). */
export interface Route {
  /** '' for events of no table (application, commit); then `table` is a prefix or ''. */
  readonly schema: string;
  readonly table: string;
  readonly op: string;
  /** Routed by a key of its own, not by table (application and commit events). */
  readonly fixed: boolean;
  readonly exchange: string;
  readonly routingKey: string;
  readonly expiration: string | undefined;
  /** Why the routing key cannot be used (over 255 bytes), or null. */
  readonly keyError: string | null;
}

/** Routes kept at most; a database with more table and op pairs starts the cache afresh. */
const MAX_ROUTES = 4096;

export class Router {
  private readonly routes = new Map<string, Route>();
  private last: Route | null = null;
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

  /** The rule (or defaults) for a table; not cached: `route` caches the decisions. */
  forTable(schema: string, table: string): TableRoute {
    return this.rules.find((r) => globMatches(r.glob, schema, table))?.route ?? this.fallback;
  }

  /**
   * The route of events of one table and op in database `db` (one router serves one database).
   * The last one is checked first: changes come in runs of one table.
   */
  route(db: string, schema: string, table: string, op: string): Route {
    const last = this.last;
    if (last && !last.fixed && last.table === table && last.schema === schema && last.op === op) return last;
    const key = `${schema}\u0000${table}\u0000${op}`;
    let route = this.routes.get(key);
    if (!route) {
      const t = this.forTable(schema, table);
      route = this.remember(key, { schema, table, op, fixed: false, t, routingKey: t.routingKey({ db, schema, table, op }) });
    }
    this.last = route;
    return route;
  }

  /**
   * The route of events with a routing key of their own (application and commit events): the
   * default exchange, no per-table rule. `label` names them in metrics and headers (a prefix, or '').
   */
  fixedRoute(label: string, op: string, routingKey: string): Route {
    const last = this.last;
    if (last && last.fixed && last.routingKey === routingKey && last.op === op && last.table === label) return last;
    const key = `\u0001${label}\u0000${op}\u0000${routingKey}`;
    let route = this.routes.get(key);
    // An application event may name any routing key: one over 255 bytes is dead-lettered.
    if (!route) route = this.remember(key, { schema: '', table: label, op, fixed: true, t: this.fallback, routingKey });
    this.last = route;
    return route;
  }

  /**
   * The route of a snapshot's read events aimed elsewhere than the table's route (`pgwarren
   * snapshot --exchange/--routing-key`): not cached, the caller keeps it for a chunk.
   */
  snapshotRoute(db: string, schema: string, table: string, over: { readonly exchange: string | undefined; readonly routingKey: RoutingKeyFn | undefined }): Route {
    const t = this.forTable(schema, table);
    const routingKey = (over.routingKey ?? t.routingKey)({ db, schema, table, op: 'read' });
    return { schema, table, op: 'read', fixed: false, exchange: over.exchange ?? t.exchange, routingKey, expiration: t.expiration, keyError: routingKeyError(routingKey) };
  }

  private remember(key: string, r: { schema: string; table: string; op: string; fixed: boolean; t: TableRoute; routingKey: string }): Route {
    const route: Route = {
      schema: r.schema,
      table: r.table,
      op: r.op,
      fixed: r.fixed,
      exchange: r.t.exchange,
      routingKey: r.routingKey,
      expiration: r.t.expiration,
      keyError: routingKeyError(r.routingKey),
    };
    if (this.routes.size >= MAX_ROUTES) this.routes.clear();
    this.routes.set(key, route);
    return route;
  }
}

/** Why `routingKey` cannot be used (over the 255 bytes AMQP allows), or null. */
export function routingKeyError(routingKey: string): string | null {
  const bytes = Buffer.byteLength(routingKey, 'utf8');
  return bytes > ROUTING_KEY_MAX_BYTES ? `routing key is ${bytes} bytes, above the ${ROUTING_KEY_MAX_BYTES} AMQP allows: "${routingKey.slice(0, 80)}..."` : null;
}
