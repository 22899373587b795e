/**
 * Routing key templates: `{db}`, `{schema}`, `{table}`, `{op}` placeholders, compiled once into
 * a function so the hot path only concatenates. Config validation rejects other placeholders.
 */
export interface RoutingFields {
  readonly db: string;
  readonly schema: string;
  readonly table: string;
  readonly op: string;
}

/** AMQP encodes a routing key as a short string: at most 255 bytes. */
export const ROUTING_KEY_MAX_BYTES = 255;

export type RoutingKeyFn = (fields: RoutingFields) => string;

const PLACEHOLDER = /\{(db|schema|table|op)\}/g;

export function compileRoutingKey(template: string): RoutingKeyFn {
  const pieces: Array<string | keyof RoutingFields> = [];
  const literals: boolean[] = [];
  let last = 0;
  for (const m of template.matchAll(PLACEHOLDER)) {
    if (m.index! > last) {
      pieces.push(template.slice(last, m.index));
      literals.push(true);
    }
    pieces.push(m[1] as keyof RoutingFields);
    literals.push(false);
    last = m.index! + m[0].length;
  }
  if (last < template.length) {
    pieces.push(template.slice(last));
    literals.push(true);
  }
  return (fields) => {
    let out = '';
    for (let i = 0; i < pieces.length; i++) out += literals[i] ? pieces[i] : fields[pieces[i] as keyof RoutingFields];
    return out;
  };
}
