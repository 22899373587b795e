/**
 * The one shape of "run a query" the source side needs, so catalog readers work with a pg.Client,
 * a pg.Pool or a test double alike.
 */
export type QueryFn = <Row = Record<string, unknown>>(sql: string, params?: unknown[]) => Promise<{ rows: Row[] }>;

export interface Queryable {
  query(sql: string, params?: unknown[]): Promise<{ rows: unknown[] }>;
}

export function queryFn(db: Queryable): QueryFn {
  return async <Row>(sql: string, params?: unknown[]) => {
    const result = await db.query(sql, params);
    return { rows: result.rows as Row[] };
  };
}
