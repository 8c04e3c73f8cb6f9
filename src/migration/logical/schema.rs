//! The schema check before logical sync starts: the target must have every table of the source
//! with the same columns and types, each table a primary key or replica identity on both sides
//! (so UPDATE and DELETE replicate either way), every sequence, and, for the initial copy, empty
//! tables. Every difference is listed, in words an operator can act on.

use std::collections::BTreeMap;

use super::{LogicalError, Store};
use crate::server::ServerConn;

/// Columns of user tables (not partitions, not system schemas), in order.
const COLUMNS_SQL: &str = "SELECT n.nspname, c.relname, a.attname, format_type(a.atttypid, a.atttypmod) \
     FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
     JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
     WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition \
     AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%' \
     ORDER BY 1, 2, a.attnum";

/// Whether each user table has a replica identity UPDATE and DELETE can be published with.
const IDENTITY_SQL: &str = "SELECT n.nspname, c.relname, \
     (c.relreplident = 'f' \
      OR (c.relreplident = 'd' AND EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary)) \
      OR (c.relreplident = 'i' AND EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisreplident)))::text \
     FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
     WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition \
     AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%' ORDER BY 1, 2";

const SEQUENCES_SQL: &str = "SELECT schemaname, sequencename FROM pg_sequences ORDER BY 1, 2";

/// A table as `schema.name`, and its columns with their types.
type Tables = BTreeMap<(String, String), Vec<(String, String)>>;

/// What one server has.
pub struct Schema {
    tables: Tables,
    identity: BTreeMap<(String, String), bool>,
    sequences: Vec<(String, String)>,
}

impl Schema {
    /// Reads it over an admin connection.
    pub async fn read(conn: &mut ServerConn, store: Store, database: &str) -> Result<Schema, LogicalError> {
        let sql = |what: &str, e: crate::server::ServerError| LogicalError::Sql {
            store: store.name(),
            database: database.into(),
            what: what.into(),
            message: e.to_string(),
        };
        let mut tables = Tables::new();
        for row in conn.query_rows(COLUMNS_SQL).await.map_err(|e| sql("reading its tables", e))? {
            let [s, t, col, ty] = texts(row);
            tables.entry((s, t)).or_default().push((col, ty));
        }
        let mut identity = BTreeMap::new();
        for row in conn.query_rows(IDENTITY_SQL).await.map_err(|e| sql("reading replica identities", e))? {
            let [s, t, ok, _] = texts(row);
            identity.insert((s, t), ok == "true");
        }
        let sequences = conn
            .query_rows(SEQUENCES_SQL)
            .await
            .map_err(|e| sql("reading its sequences", e))?
            .into_iter()
            .map(|r| {
                let [s, n, _, _] = texts(r);
                (s, n)
            })
            .collect();
        Ok(Schema { tables, identity, sequences })
    }

    /// The tables, as quoted `schema.table` names for a publication.
    pub fn qualified_tables(&self) -> Vec<String> {
        self.tables.keys().map(|(s, t)| qualified(s, t)).collect()
    }
}

/// `"schema"."table"`.
pub fn qualified(schema: &str, table: &str) -> String {
    format!("{}.{}", crate::notify::quote_ident(schema), crate::notify::quote_ident(table))
}

fn texts(row: Vec<Option<String>>) -> [String; 4] {
    let mut it = row.into_iter().map(Option::unwrap_or_default);
    std::array::from_fn(|_| it.next().unwrap_or_default())
}

/// Every difference that keeps logical replication from making (and keeping) an exact copy.
pub fn differences(source: &Schema, target: &Schema) -> Vec<String> {
    let mut out = Vec::new();
    for ((s, t), cols) in &source.tables {
        let name = format!("{s}.{t}");
        let Some(theirs) = target.tables.get(&(s.clone(), t.clone())) else {
            out.push(format!("table {name}: missing on the target"));
            continue;
        };
        for (col, ty) in cols {
            match theirs.iter().find(|(c, _)| c == col) {
                None => out.push(format!("column {name}.{col}: missing on the target")),
                Some((_, other)) if other != ty => {
                    out.push(format!("column {name}.{col}: {ty} on the source, {other} on the target"))
                }
                Some(_) => {}
            }
        }
        for (col, _) in theirs.iter().filter(|(c, _)| !cols.iter().any(|(mine, _)| mine == c)) {
            out.push(format!("column {name}.{col}: only on the target"));
        }
        for (store, schema) in [("source", source), ("target", target)] {
            if schema.identity.get(&(s.clone(), t.clone())) == Some(&false) {
                out.push(format!(
                    "table {name}: no primary key or replica identity on the {store}, so its UPDATEs and DELETEs cannot be replicated (add a primary key, or ALTER TABLE ... REPLICA IDENTITY FULL)"
                ));
            }
        }
    }
    for (s, t) in target.tables.keys().filter(|k| !source.tables.contains_key(k)) {
        out.push(format!("table {s}.{t}: only on the target"));
    }
    for (s, n) in source.sequences.iter().filter(|q| !target.sequences.contains(q)) {
        out.push(format!("sequence {s}.{n}: missing on the target"));
    }
    out
}

/// The tables of `schema` that already hold rows on the target (the initial copy needs them
/// empty: it inserts every source row).
pub async fn non_empty(conn: &mut ServerConn, schema: &Schema, database: &str) -> Result<Vec<String>, LogicalError> {
    let mut out = Vec::new();
    for (s, t) in schema.tables.keys() {
        let sql = format!("SELECT EXISTS (SELECT 1 FROM ONLY {})::text", qualified(s, t));
        let row = conn.query_row(&sql).await.map_err(|e| LogicalError::Sql {
            store: "target",
            database: database.into(),
            what: format!("reading {s}.{t}"),
            message: e.to_string(),
        })?;
        if row.first().cloned().flatten().as_deref() == Some("true") {
            out.push(format!("table {s}.{t}: holds rows on the target; the initial copy needs it empty"));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (table, its columns with types, has a replica identity).
    type TableSpec<'a> = (&'a str, &'a [(&'a str, &'a str)], bool);

    fn schema(tables: &[TableSpec], sequences: &[&str]) -> Schema {
        let key = |t: &str| ("public".to_string(), t.to_string());
        Schema {
            tables: tables
                .iter()
                .map(|(t, cols, _)| (key(t), cols.iter().map(|(c, ty)| (c.to_string(), ty.to_string())).collect()))
                .collect(),
            identity: tables.iter().map(|(t, _, ok)| (key(t), *ok)).collect(),
            sequences: sequences.iter().map(|s| ("public".to_string(), s.to_string())).collect(),
        }
    }

    #[test]
    fn every_difference_is_listed() {
        let src = schema(
            &[("a", &[("id", "bigint"), ("v", "text")], true), ("b", &[("id", "integer")], false)],
            &["a_id_seq"],
        );
        let dst = schema(&[("a", &[("id", "integer"), ("w", "text")], true), ("c", &[("id", "integer")], true)], &[]);
        let d = differences(&src, &dst);
        let expect = [
            "column public.a.id: bigint on the source, integer on the target",
            "column public.a.v: missing on the target",
            "column public.a.w: only on the target",
            "table public.b: missing on the target",
            "table public.c: only on the target",
            "sequence public.a_id_seq: missing on the target",
        ];
        for e in expect {
            assert!(d.iter().any(|x| x == e), "{e} not in {d:#?}");
        }
        assert_eq!(d.len(), expect.len(), "{d:#?}");
        let same = differences(&src, &schema(&[("a", &[("id", "bigint"), ("v", "text")], true)], &["a_id_seq"]));
        assert_eq!(same, ["table public.b: missing on the target"]);
        let no_identity = differences(
            &schema(&[("b", &[("id", "integer")], false)], &[]),
            &schema(&[("b", &[("id", "integer")], true)], &[]),
        );
        assert!(no_identity[0].contains("no primary key or replica identity on the source"), "{no_identity:?}");
    }
}
