//! Verification: compares source and target table by table — row counts, and a hash of every
//! row keyed by its primary key (a sample of large tables) — then sequence by sequence, and
//! reports missing and differing rows (and sequences) with a few examples.

use serde::Serialize;
use std::collections::HashMap;
use std::time::Instant;

use crate::server::ServerConn;
use crate::shared::Runtime;

/// Examples of differing rows kept per table.
const EXAMPLES: usize = 5;

/// One table's comparison (or one sequence's, as a table of one row: its `last_value`).
#[derive(Debug, Clone, Serialize)]
pub struct TableReport {
    /// `schema.table`.
    pub table: String,
    /// Rows on the source.
    pub source_rows: i64,
    /// Rows on the target (-1: the table is missing there).
    pub target_rows: i64,
    /// Share of rows compared one by one (100 unless the table is large).
    pub sampled_percent: u8,
    /// Compared rows only on the source.
    pub missing_on_target: u64,
    /// Compared rows only on the target.
    pub missing_on_source: u64,
    /// Compared rows present on both with different contents.
    pub differing: u64,
    /// A few primary keys of differences.
    pub examples: Vec<String>,
    /// Rows compared one by one (the source's rows in the sample).
    pub rows_checked: u64,
    /// The table differed at first and was compared again after a pause (rows in flight).
    pub rechecked: bool,
}

/// A whole verification.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Database compared.
    pub database: String,
    /// Seconds the comparison took.
    pub seconds: f64,
    /// Per table.
    pub tables: Vec<TableReport>,
    /// Sum of differences (missing + differing + count mismatches).
    pub differences: u64,
    /// A failure that stopped the comparison.
    pub error: Option<String>,
    /// Rows compared one by one, all tables.
    pub rows_checked: u64,
    /// When it finished (seconds since the Unix epoch).
    pub finished_at: u64,
}

async fn connect(rt: &Runtime, target: bool, database: &str) -> Result<ServerConn, String> {
    let backend =
        if target { rt.targets.first().cloned().ok_or("no migration target configured")? } else { rt.primary.clone() };
    let user = rt
        .config
        .auth
        .users
        .iter()
        .filter_map(|u| rt.users.get(&u.name))
        .find(|u| u.has_backend_secret())
        .ok_or("no configured user can log in to verify")?;
    super::own_connection(rt, &backend, user, database).await
}

fn quote_ident(s: &str) -> String {
    crate::notify::quote_ident(s)
}

/// Compares every user table of `database` on source and target, and with `sequences` every
/// sequence too (statement sync replays each `nextval`; logical replication carries none, its
/// sequences are brought over at the write-target flips).
pub async fn run(rt: &Runtime, database: &str, full_below: i64, sample_percent: u8, sequences: bool) -> Report {
    let started = Instant::now();
    let mut report = Report {
        database: database.into(),
        seconds: 0.0,
        tables: Vec::new(),
        differences: 0,
        error: None,
        rows_checked: 0,
        finished_at: 0,
    };
    if let Err(e) = compare_all(rt, database, (full_below, sample_percent, sequences), &mut report).await {
        report.error = Some(e);
    }
    report.differences = report
        .tables
        .iter()
        .map(|t| t.missing_on_target + t.missing_on_source + t.differing + u64::from(t.source_rows != t.target_rows))
        .sum();
    report.rows_checked = report.tables.iter().map(|t| t.rows_checked).sum();
    report.seconds = started.elapsed().as_secs_f64();
    report.finished_at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    report
}

/// Pause before a table that differed is compared again: rows committed on one side and still in
/// flight to the other (replication or replay lag) are not differences.
const RECHECK_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

const TABLES_SQL: &str = "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
     WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
     AND n.nspname NOT LIKE 'pg_toast%' AND NOT c.relispartition ORDER BY 1, 2";

async fn compare_all(
    rt: &Runtime,
    db: &str,
    (full_below, pct, sequences): (i64, u8, bool),
    report: &mut Report,
) -> Result<(), String> {
    let mut src = connect(rt, false, db).await?;
    let mut dst = connect(rt, true, db).await?;
    let tables = src.query_rows(TABLES_SQL).await.map_err(|e| e.to_string())?;
    let on_target: Vec<_> = dst.query_rows(TABLES_SQL).await.map_err(|e| e.to_string())?;
    for row in &tables {
        let (Some(schema), Some(name)) = (row.first().cloned().flatten(), row.get(1).cloned().flatten()) else {
            continue;
        };
        let qualified = format!("{}.{}", quote_ident(&schema), quote_ident(&name));
        let mut t = empty_table(format!("{schema}.{name}"), count(&mut src, &qualified).await?);
        if on_target.iter().any(|r| {
            r.first().cloned().flatten() == Some(schema.clone()) && r.get(1).cloned().flatten() == Some(name.clone())
        }) {
            t.target_rows = count(&mut dst, &qualified).await?;
            compare_rows(&mut src, &mut dst, &qualified, full_below, pct, &mut t).await?;
            if differs(&t) {
                tokio::time::sleep(RECHECK_AFTER).await;
                let (name, rows) = (t.table.clone(), t.source_rows);
                t = TableReport { rechecked: true, ..empty_table(name, rows) };
                t.source_rows = count(&mut src, &qualified).await?;
                t.target_rows = count(&mut dst, &qualified).await?;
                compare_rows(&mut src, &mut dst, &qualified, full_below, pct, &mut t).await?;
            }
        }
        report.tables.push(t);
    }
    if sequences {
        compare_sequences(&mut src, &mut dst, report).await?;
    }
    src.close();
    dst.close();
    Ok(())
}

/// Every sequence with its state: `last_value`, or `unused` before the first `nextval`.
const SEQUENCES_SQL: &str = "SELECT schemaname || '.' || sequencename, coalesce(last_value::text, 'unused') \
     FROM pg_sequences ORDER BY 1";

/// Compares the sequences (no table row shows one that moved on one side only, and after cutover
/// the lagging side hands out ids already used): each is reported as a one-row table that
/// differs when its `last_value` does, or is missing on the target. Compared again after a pause
/// when one differs, as tables are.
async fn compare_sequences(src: &mut ServerConn, dst: &mut ServerConn, report: &mut Report) -> Result<(), String> {
    let mut seqs = sequence_reports(src, dst).await?;
    if seqs.iter().any(differs) {
        tokio::time::sleep(RECHECK_AFTER).await;
        seqs = sequence_reports(src, dst).await?;
        seqs.iter_mut().for_each(|t| t.rechecked = true);
    }
    report.tables.extend(seqs);
    Ok(())
}

async fn sequence_reports(src: &mut ServerConn, dst: &mut ServerConn) -> Result<Vec<TableReport>, String> {
    let values = |rows: Vec<Vec<Option<String>>>| -> HashMap<String, String> {
        rows.into_iter()
            .filter_map(|r| {
                let mut cols = r.into_iter();
                Some((cols.next().flatten()?, cols.next().flatten().unwrap_or_default()))
            })
            .collect()
    };
    let on_source = values(src.query_rows(SEQUENCES_SQL).await.map_err(|e| e.to_string())?);
    let on_target = values(dst.query_rows(SEQUENCES_SQL).await.map_err(|e| e.to_string())?);
    let mut names: Vec<_> = on_source.keys().collect();
    names.sort();
    Ok(names
        .into_iter()
        .map(|name| {
            let mut t = empty_table(name.clone(), 1);
            t.rows_checked = 1;
            match (on_source.get(name), on_target.get(name)) {
                (_, None) => t.missing_on_target = 1,
                (Some(s), Some(d)) => {
                    t.target_rows = 1;
                    if s != d {
                        t.differing = 1;
                        t.examples.push(format!("last_value {s} on the source, {d} on the target"));
                    }
                }
                (None, Some(_)) => t.target_rows = 1,
            }
            t
        })
        .collect())
}

fn empty_table(table: String, source_rows: i64) -> TableReport {
    TableReport {
        table,
        source_rows,
        target_rows: -1,
        sampled_percent: 100,
        missing_on_target: 0,
        missing_on_source: 0,
        differing: 0,
        examples: Vec::new(),
        rows_checked: 0,
        rechecked: false,
    }
}

fn differs(t: &TableReport) -> bool {
    t.missing_on_target + t.missing_on_source + t.differing > 0 || t.source_rows != t.target_rows
}

async fn count(c: &mut ServerConn, table: &str) -> Result<i64, String> {
    let row = c.query_row(&format!("SELECT count(*) FROM {table}")).await.map_err(|e| e.to_string())?;
    Ok(row.first().cloned().flatten().and_then(|v| v.parse().ok()).unwrap_or(0))
}

/// The key expression of a table: its primary key columns, or the whole row without one.
async fn key_expr(c: &mut ServerConn, table: &str) -> Result<String, String> {
    let sql = format!(
        "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
         WHERE i.indrelid = '{}'::regclass AND i.indisprimary ORDER BY array_position(i.indkey, a.attnum)",
        table.replace('\'', "''")
    );
    let cols: Vec<String> = c
        .query_rows(&sql)
        .await
        .map_err(|e| e.to_string())?
        .into_iter()
        .filter_map(|r| r.into_iter().next().flatten())
        .map(|n| quote_ident(&n))
        .collect();
    Ok(if cols.is_empty() { "t::text".into() } else { format!("ROW({})::text", cols.join(", ")) })
}

async fn compare_rows(
    src: &mut ServerConn,
    dst: &mut ServerConn,
    table: &str,
    full_below: i64,
    pct: u8,
    t: &mut TableReport,
) -> Result<(), String> {
    let key = key_expr(src, table).await?;
    let sample = if t.source_rows.max(t.target_rows) >= full_below {
        t.sampled_percent = pct.clamp(1, 100);
        format!(" WHERE abs(hashtext({key})) % 100 < {}", t.sampled_percent)
    } else {
        String::new()
    };
    // Duplicate keys (tables without a primary key) are counted, so a multiset compares.
    let sql = format!("SELECT {key}, md5(t::text), count(*) FROM {table} t{sample} GROUP BY 1, 2");
    let mut source: HashMap<(String, String), i64> = HashMap::new();
    for (k, h, n) in grouped_rows(src, &sql).await? {
        t.rows_checked += n.max(0) as u64;
        source.insert((k, h), n);
    }
    let mut source_keys: HashMap<String, ()> = source.keys().map(|(k, _)| (k.clone(), ())).collect();
    for (k, h, n) in grouped_rows(dst, &sql).await? {
        if let Some(on_source) = source.remove(&(k.clone(), h)) {
            source_keys.remove(&k);
            if on_source == n {
                continue;
            }
            // The same row, a different number of copies (a table without primary key).
            t.differing += 1;
        } else if source_keys.remove(&k).is_some() {
            source.retain(|(sk, _), _| *sk != k);
            t.differing += 1;
        } else {
            t.missing_on_source += 1;
        }
        if t.examples.len() < EXAMPLES {
            t.examples.push(k);
        }
    }
    t.missing_on_target = source.len() as u64;
    for ((k, _), _) in source.into_iter().take(EXAMPLES.saturating_sub(t.examples.len())) {
        t.examples.push(k);
    }
    Ok(())
}

/// The rows of a `key, hash, count` query.
async fn grouped_rows(c: &mut ServerConn, sql: &str) -> Result<Vec<(String, String, i64)>, String> {
    let rows = c.query_rows(sql).await.map_err(|e| e.to_string())?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let mut cols = r.into_iter();
            let (k, h) = (cols.next().flatten().unwrap_or_default(), cols.next().flatten().unwrap_or_default());
            (k, h, cols.next().flatten().and_then(|v| v.parse().ok()).unwrap_or(1))
        })
        .collect())
}
