/**
 * pgoutput messages -> plugin-blind `Decoded` items.
 *
 * pgoutput announces each table with a Relation message before its first change in a session and
 * again after its shape changes; changes then refer to it by OID. The decoder keeps those
 * announcements and completes them with the primary key from the catalog, since pgoutput only
 * flags the replica identity columns.
 */
import type { Decoded, RawTuple, RelationInfo, Change } from '../types.js';
import { optionLiteral, quoteIdent, type Decoder } from './decoder.js';
import { parsePgoutput, PgoutputProtocolError, type PgOutputMessage, type PgRelation } from './pgoutput-protocol.js';
import { REPLICA_IDENTITY, keyColumnsOf, type RelationCatalog } from './relation-catalog.js';
import { pgMicrosToIso } from './time.js';

export class PgoutputDecoder implements Decoder<PgOutputMessage> {
  readonly plugin = 'pgoutput' as const;
  private readonly relations = new Map<number, RelationInfo>();

  constructor(
    private readonly publications: readonly string[],
    private readonly catalog: RelationCatalog,
  ) {}

  startOptions(): string[] {
    return [
      `proto_version ${optionLiteral('1')}`,
      `publication_names ${optionLiteral(this.publications.map(quoteIdent).join(','))}`,
      // Logical messages carry the flood marker (pg_logical_emit_message(true, 'pgwarren', 'bulk')).
      `messages ${optionLiteral('true')}`,
    ];
  }

  parse(payload: Buffer): PgOutputMessage {
    return parsePgoutput(payload);
  }

  decode(msg: PgOutputMessage): Decoded[] | Promise<Decoded[]> {
    switch (msg.tag) {
      case 'B':
        return [{ kind: 'begin', xid: msg.xid, commitLsn: msg.finalLsn, commitTime: pgMicrosToIso(msg.commitTimeMicros) }];
      case 'C':
        return [{ kind: 'commit', commitLsn: msg.commitLsn, endLsn: msg.endLsn }];
      case 'R':
        return this.learnRelation(msg);
      case 'Y':
      case 'O':
        return [];
      case 'M':
        return [{ kind: 'message', transactional: msg.transactional, prefix: msg.prefix, content: msg.content }];
      case 'I':
        return [{ kind: 'change', op: 'insert', relation: this.relation(msg.relationOid), old: null, oldKind: 'none', new: msg.newTuple }];
      case 'U':
        return [
          {
            kind: 'change',
            op: 'update',
            relation: this.relation(msg.relationOid),
            old: msg.oldTuple,
            oldKind: msg.oldKind === 'O' ? 'full' : msg.oldKind === 'K' ? 'key' : 'none',
            new: msg.newTuple,
          },
        ];
      case 'D':
        return [
          {
            kind: 'change',
            op: 'delete',
            relation: this.relation(msg.relationOid),
            old: msg.oldTuple as RawTuple,
            oldKind: msg.oldKind === 'O' ? 'full' : 'key',
            new: null,
          },
        ];
      case 'T':
        return msg.relationOids.map(
          (oid): Change => ({ kind: 'truncate', relation: this.relation(oid), cascade: msg.cascade, restartIdentity: msg.restartIdentity }),
        );
    }
  }

  private relation(oid: number): RelationInfo {
    const rel = this.relations.get(oid);
    if (!rel) throw new PgoutputProtocolError(`change for relation ${oid} arrived before its Relation message`);
    return rel;
  }

  private async learnRelation(msg: PgRelation): Promise<Decoded[]> {
    const facts = await this.catalog.refreshByOid(msg.oid);
    this.relations.set(msg.oid, {
      oid: msg.oid,
      schema: msg.schema,
      table: msg.table,
      replicaIdentity: REPLICA_IDENTITY[msg.replicaIdentity] ?? 'default',
      columns: msg.columns.map((c) => ({ name: c.name, typeOid: c.typeOid, typeMod: c.typeMod, inReplicaIdentity: (c.flags & 1) !== 0 })),
      // A table dropped since the change was written has no catalog entry: fall back to the
      // identity columns pgoutput flagged, unless that is every column (REPLICA IDENTITY FULL).
      keyColumns: facts
        ? keyColumnsOf(facts)
        : msg.replicaIdentity === 'f'
          ? []
          : msg.columns.filter((c) => (c.flags & 1) !== 0).map((c) => c.name),
    });
    return [];
  }
}
