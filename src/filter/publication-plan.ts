/**
 * What the publications should hold, decided here (downstream of source/) from the configured
 * selection and rules: the table globs, the operations, the columns rules leave out, and each
 * table's row filter with the columns it uses. source/publication.ts only turns the plan into
 * Postgres statements.
 */
import type { Op } from '../types.js';
import type { ExcludedColumns, PublicationPlan, RowFilter, RowFilters } from '../source/publication.js';
import { FilterSyntaxError, filterColumns, parseFilter } from './row-filter.js';
import { OperationSelection, TableSelection, excludedColumnsLookup, ruleLookup } from './selection.js';

export interface PlanSettings {
  readonly tables: readonly string[];
  readonly excludeTables: readonly string[];
  readonly operations: readonly Op[];
  readonly rules: readonly { readonly match: string; readonly where?: string; readonly excludeColumns?: readonly string[] }[];
}

/**
 * The plan for `settings`. `excludeColumns: false` publishes whole tables (setup does so before it
 * makes replica identities FULL; check does when it only asks where tables belong).
 */
export function publicationPlan(settings: PlanSettings, opts: { excludeColumns?: boolean } = {}): PublicationPlan {
  const excludedColumns: ExcludedColumns | undefined = opts.excludeColumns === false ? undefined : excludedColumnsLookup(settings.rules);
  return {
    tables: new TableSelection(settings.tables, settings.excludeTables),
    operations: new OperationSelection(settings.operations),
    excludedColumns,
    rowFilters: rowFilterLookup(settings.rules),
  };
}

/** Per table, the row filter of its rule (README "Shaping the stream"), with the columns it uses. */
export function rowFilterLookup(rules: PlanSettings['rules']): RowFilters {
  return ruleLookup<PlanSettings['rules'][number], RowFilter | null>(rules, (r) => (r.where === undefined ? undefined : rowFilter(r.where)), null);
}

function rowFilter(where: string): RowFilter {
  try {
    return { where, columns: filterColumns(parseFilter(where)) };
  } catch (err) {
    // Outside the subset pgwarren parses: Postgres judges it when the publication is changed.
    if (err instanceof FilterSyntaxError) return { where, columns: null };
    throw err;
  }
}
