//! The console's SHOW results, with PgBouncer 1.2x's column names and types (int4 counts,
//! numeric totals, text timestamps), built from the same [`view`](super::view) as `/stats`.
//!
//! Where pgshift does not track what a column means, it says 0 (or NULL) rather than guess; the
//! list is in docs/admin.md.

use bytes::{BufMut, BytesMut};
use std::collections::BTreeMap;

use super::console_clients;
use super::view::{self, PoolGroup};
use crate::config::PoolMode;
use crate::shared::Shared;
use crate::stats::TrafficTotals;
use crate::wire::messages::{self, ColType};
use crate::wire::tag;

/// PgBouncer's `s` and `T` columns (text, timestamps as text).
pub(super) const T: ColType = ColType::Text;
/// PgBouncer's `i` columns (int4).
pub(super) const I: ColType = ColType::Int4;
/// PgBouncer's `N` columns (uint64 sent as numeric).
const N: ColType = ColType::Numeric;

/// Column names and types of a result.
pub(super) type Cols = &'static [(&'static str, ColType)];
/// One row of text values (`None` is NULL).
pub(super) type Row = Vec<Option<String>>;

/// A result set: column descriptions and text rows.
pub struct Table {
    pub(super) cols: Cols,
    pub(super) rows: Vec<Row>,
}

impl Table {
    /// RowDescription, DataRows, CommandComplete "SHOW" (PgBouncer's tag for every SHOW).
    pub fn write(&self, out: &mut BytesMut) {
        messages::put_row_description(out, self.cols);
        for r in &self.rows {
            let values: Vec<Option<&str>> = r.iter().map(|v| v.as_deref()).collect();
            messages::put_data_row(out, &values);
        }
        messages::put_command_complete(out, "SHOW");
    }
}

/// A non-NULL value.
pub(super) fn v(x: impl ToString) -> Option<String> {
    Some(x.to_string())
}

/// SHOW HELP: a NOTICE with the command list, as PgBouncer sends it.
pub fn help(out: &mut BytesMut) {
    let detail = "\n\tSHOW HELP|CONFIG|DATABASES|POOLS|CLIENTS|SERVERS|USERS|VERSION\n\
                  \tSHOW LISTS|STATE|PEERS\n\tSHOW STATS|STATS_TOTALS|STATS_AVERAGES\n\tRELOAD\n\tPAUSE\n\tRESUME\n\
                  \tRECONNECT\n\tKILL_CLIENT <client_id>";
    messages::put_frame(out, tag::NOTICE_RESPONSE, |b| {
        for (field, value) in
            [(b'S', "NOTICE"), (b'V', "NOTICE"), (b'C', "00000"), (b'M', "Console usage"), (b'D', detail)]
        {
            b.put_u8(field);
            messages::put_cstr(b, value.as_bytes());
        }
        b.put_u8(0);
    });
    messages::put_command_complete(out, "SHOW");
}

/// The table for `SHOW <what>`, or `None` for an unknown SHOW.
pub fn show(shared: &Shared, what: &str) -> Option<Table> {
    let table = match what.to_ascii_lowercase().as_str() {
        "pools" => pools(shared),
        "stats" => stats(shared),
        "stats_totals" => stats_split(shared, true),
        "stats_averages" => stats_split(shared, false),
        "clients" => console_clients::clients(shared),
        "servers" => console_clients::servers(shared),
        "databases" => databases(shared),
        "users" => users(shared),
        "config" => config(shared),
        "lists" => lists(shared),
        "state" => state(shared),
        "peers" => peers(shared),
        "version" => {
            Table { cols: &[("version", T)], rows: vec![vec![v(format!("pgshift {}", env!("CARGO_PKG_VERSION")))]] }
        }
        _ => return None,
    };
    Some(table)
}

/// SHOW PEERS: PgBouncer's columns (peer_id, host, port, pool_size), then what the fleet's
/// heartbeats say of each live member; configured peers not heard from are listed with NULLs.
fn peers(shared: &Shared) -> Table {
    const COLS: Cols = &[
        ("peer_id", I),
        ("host", T),
        ("port", I),
        ("pool_size", I),
        ("version", T),
        ("phase", T),
        ("clients", I),
        ("servers", I),
        ("last_seen_ms", I),
        ("self", T),
    ];
    let rt = shared.runtime.load();
    let me = rt.config.fleet.id;
    let members = shared.fleet.members();
    let mut ids: std::collections::BTreeSet<u16> = members.iter().map(|m| m.id).collect();
    ids.extend(rt.config.fleet.peers.iter().map(|p| p.id));
    let rows = ids
        .into_iter()
        .map(|id| {
            let m = members.iter().find(|m| m.id == id);
            let address = m.map(|m| m.listen.clone()).or_else(|| rt.config.fleet.peer(id).map(str::to_string));
            let (host, port) = match address.as_deref().and_then(|a| a.rsplit_once(':')) {
                Some((h, p)) => (v(h.trim_matches(['[', ']'])), p.parse::<u16>().ok().map(|p| p.to_string())),
                None => (None, None),
            };
            vec![
                v(id),
                host,
                port,
                v(0),
                m.map(|m| m.version.clone()),
                m.map(|m| m.phase.clone()),
                m.map(|m| m.clients.to_string()),
                m.map(|m| m.servers.to_string()),
                m.map(|m| m.seen_ms_ago.to_string()),
                v(if id == me { "yes" } else { "no" }),
            ]
        })
        .collect();
    Table { cols: COLS, rows }
}

fn pool_mode(shared: &Shared) -> &'static str {
    match shared.runtime.load().config.proxy.pool_mode {
        PoolMode::Transaction => "transaction",
        PoolMode::Session => "session",
    }
}

fn pools(shared: &Shared) -> Table {
    const COLS: Cols = &[
        ("database", T),
        ("user", T),
        ("cl_active", I),
        ("cl_waiting", I),
        ("cl_active_cancel_req", I),
        ("cl_waiting_cancel_req", I),
        ("sv_active", I),
        ("sv_active_cancel", I),
        ("sv_being_canceled", I),
        ("sv_idle", I),
        ("sv_used", I),
        ("sv_tested", I),
        ("sv_login", I),
        ("maxwait", I),
        ("maxwait_us", I),
        ("pool_mode", T),
        ("load_balance_hosts", T),
        ("session_resets", I),
        ("cancel_holds", I),
        ("cancels_dropped", I),
    ];
    let mode = pool_mode(shared);
    let rows = view::pool_groups(shared)
        .into_iter()
        .map(|g| {
            let us = (g.maxwait * 1e6) as u64;
            vec![
                v(&g.database),
                v(&g.user),
                v(g.cl_active),
                v(g.cl_waiting),
                v(0),
                v(0),
                v(g.sv_active),
                v(0),
                v(0),
                v(g.sv_idle),
                v(g.sv_used),
                v(0),
                v(g.sv_login),
                v(us / 1_000_000),
                v(us % 1_000_000),
                v(mode),
                None,
                v(g.resets),
                v(g.cancel_holds),
                v(g.cancels_dropped),
            ]
        })
        .collect();
    Table { cols: COLS, rows }
}

/// Traffic summed per database, as PgBouncer's SHOW STATS rows are.
fn by_database(groups: &[PoolGroup]) -> BTreeMap<String, TrafficTotals> {
    let mut m: BTreeMap<String, TrafficTotals> = BTreeMap::new();
    for g in groups {
        *m.entry(g.database.clone()).or_default() += &g.traffic;
    }
    m
}

/// Totals in SHOW STATS order: server assignments (one per transaction here), transactions,
/// queries, bytes in, bytes out, xact/query/wait microseconds, then the three prepared-statement
/// counters pgshift does not keep.
fn totals_row(t: &TrafficTotals) -> [u64; 11] {
    [t.xacts, t.xacts, t.queries, t.bytes_in, t.bytes_out, t.xact_us, t.query_us, t.wait_us, 0, 0, 0]
}

/// Averages in the same order: rates per second over the process lifetime (PgBouncer uses its
/// last stats_period), durations as means per transaction or query.
fn averages_row(t: &TrafficTotals, uptime_s: u64) -> [u64; 11] {
    let per_s = |x: u64| x / uptime_s.max(1);
    let mean = |sum: u64, n: u64| sum.checked_div(n).unwrap_or(0);
    [
        per_s(t.xacts),
        per_s(t.xacts),
        per_s(t.queries),
        per_s(t.bytes_in),
        per_s(t.bytes_out),
        mean(t.xact_us, t.xacts),
        mean(t.query_us, t.queries),
        mean(t.wait_us, t.xacts),
        0,
        0,
        0,
    ]
}

fn stats(shared: &Shared) -> Table {
    const COLS: Cols = &[
        ("database", T),
        ("total_server_assignment_count", N),
        ("total_xact_count", N),
        ("total_query_count", N),
        ("total_received", N),
        ("total_sent", N),
        ("total_xact_time", N),
        ("total_query_time", N),
        ("total_wait_time", N),
        ("total_client_parse_count", N),
        ("total_server_parse_count", N),
        ("total_bind_count", N),
        ("avg_server_assignment_count", N),
        ("avg_xact_count", N),
        ("avg_query_count", N),
        ("avg_recv", N),
        ("avg_sent", N),
        ("avg_xact_time", N),
        ("avg_query_time", N),
        ("avg_wait_time", N),
        ("avg_client_parse_count", N),
        ("avg_server_parse_count", N),
        ("avg_bind_count", N),
    ];
    let uptime = shared.admin.started.elapsed().as_secs();
    let rows = by_database(&view::pool_groups(shared))
        .into_iter()
        .map(|(db, t)| {
            let mut row = vec![v(db)];
            row.extend(totals_row(&t).iter().chain(averages_row(&t, uptime).iter()).map(v));
            row
        })
        .collect();
    Table { cols: COLS, rows }
}

fn stats_split(shared: &Shared, totals: bool) -> Table {
    const TOTALS: Cols = &[
        ("database", T),
        ("server_assignment_count", N),
        ("xact_count", N),
        ("query_count", N),
        ("bytes_received", N),
        ("bytes_sent", N),
        ("xact_time", N),
        ("query_time", N),
        ("wait_time", N),
        ("client_parse_count", N),
        ("server_parse_count", N),
        ("bind_count", N),
    ];
    const AVERAGES: Cols = &[
        ("database", T),
        ("server_assignment_count", N),
        ("xact_count", N),
        ("query_count", N),
        ("bytes_received", N),
        ("bytes_sent", N),
        ("xact_time", N),
        ("query_time", N),
        ("wait_time", N),
        ("avg_client_parse_count", N),
        ("avg_server_parse_count", N),
        ("avg_bind_count", N),
    ];
    let uptime = shared.admin.started.elapsed().as_secs();
    let rows = by_database(&view::pool_groups(shared))
        .into_iter()
        .map(|(db, t)| {
            let values = if totals { totals_row(&t) } else { averages_row(&t, uptime) };
            std::iter::once(v(db)).chain(values.iter().map(v)).collect()
        })
        .collect();
    Table { cols: if totals { TOTALS } else { AVERAGES }, rows }
}

fn databases(shared: &Shared) -> Table {
    const COLS: Cols = &[
        ("name", T),
        ("host", T),
        ("port", I),
        ("database", T),
        ("force_user", T),
        ("pool_size", I),
        ("min_pool_size", I),
        ("reserve_pool_size", I),
        ("server_lifetime", I),
        ("pool_mode", T),
        ("load_balance_hosts", T),
        ("max_connections", I),
        ("current_connections", I),
        ("max_client_connections", I),
        ("current_client_connections", I),
        ("paused", I),
        ("disabled", I),
        ("cluster", T),
    ];
    let rt = shared.runtime.load_full();
    let p = &rt.config.proxy;
    let paused = u8::from(*shared.paused.borrow());
    // Listed entries, and every name served through "*" that has clients or pools now.
    let mut names: std::collections::BTreeSet<String> = rt.databases.listed().map(|d| d.name.clone()).collect();
    names.extend(view::pool_groups(shared).into_iter().map(|g| g.database));
    let rows = names
        .into_iter()
        .filter_map(|name| rt.databases.resolve(&name))
        .map(|db| {
            let d = &db.settings;
            let (host, port) = split_address(&db.cluster.primary.address);
            let (servers, clients) = shared.pools.limits.db_counts(&db.name);
            vec![
                v(&db.name),
                v(host),
                v(port),
                v(&db.server_db),
                db.forced_user.as_ref().map(|u| u.name.clone()),
                v(d.pool_size.unwrap_or(p.default_pool_size)),
                v(d.min_pool_size.unwrap_or(p.min_pool_size)),
                v(d.reserve_pool_size.unwrap_or(p.reserve_pool_size)),
                v(d.server_lifetime.unwrap_or(p.server_lifetime).0.as_secs()),
                v(mode_name(d.pool_mode.unwrap_or(p.pool_mode))),
                None,
                v(rt.max_db_connections(&db)),
                v(servers),
                v(rt.max_db_client_connections(&db)),
                v(clients),
                v(paused),
                v(0),
                v(&db.cluster.name),
            ]
        })
        .collect();
    Table { cols: COLS, rows }
}

/// `host:port` (IPv6 hosts included) as separate columns.
fn split_address(a: &str) -> (&str, &str) {
    a.rsplit_once(':').unwrap_or((a, ""))
}

fn mode_name(m: crate::config::PoolMode) -> &'static str {
    match m {
        crate::config::PoolMode::Session => "session",
        crate::config::PoolMode::Transaction => "transaction",
    }
}

fn users(shared: &Shared) -> Table {
    const COLS: Cols = &[
        ("name", T),
        ("pool_size", T),
        ("reserve_pool_size", T),
        ("pool_mode", T),
        ("max_user_connections", I),
        ("current_connections", I),
        ("max_user_client_connections", I),
        ("current_client_connections", I),
    ];
    let rt = shared.runtime.load_full();
    let groups = view::pool_groups(shared);
    let mut names: std::collections::BTreeSet<String> = rt.config.auth.users.iter().map(|u| u.name.clone()).collect();
    names.extend(rt.config.users.keys().cloned());
    let rows = names
        .into_iter()
        .map(|name| {
            let settings = rt.config.users.get(&name);
            let configured = rt.config.auth.users.iter().find(|u| u.name == name).and_then(|u| u.pool_size);
            let pool_size = settings.and_then(|u| u.pool_size).or(configured);
            let mode = settings.and_then(|u| u.pool_mode).map(mode_name);
            let mine = groups.iter().filter(|g| g.user == name);
            let servers: usize = mine.clone().map(|g| g.sv_active + g.sv_idle + g.sv_login).sum();
            let clients: usize = mine.map(|g| g.cl_active + g.cl_waiting).sum();
            vec![
                v(&name),
                pool_size.map(|s| s.to_string()),
                None,
                mode.map(str::to_string),
                v(rt.max_user_connections(&name)),
                v(servers),
                v(rt.max_user_client_connections(&name)),
                v(clients),
            ]
        })
        .collect();
    Table { cols: COLS, rows }
}

fn lists(shared: &Shared) -> Table {
    let groups = view::pool_groups(shared);
    let dbs: std::collections::BTreeSet<&str> = groups.iter().map(|g| g.database.as_str()).collect();
    let servers: usize = groups.iter().map(|g| g.sv_active + g.sv_idle + g.sv_login).sum();
    let clients = shared.sessions.len();
    let items: [(&str, usize); 12] = [
        ("databases", dbs.len()),
        ("users", shared.runtime.load().config.auth.users.len()),
        ("pools", groups.len()),
        ("free_clients", 0),
        ("used_clients", clients),
        ("login_clients", shared.conn_count.logging_in()),
        ("free_servers", 0),
        ("used_servers", servers),
        ("dns_names", 0),
        ("dns_zones", 0),
        ("dns_queries", 0),
        ("dns_pending", 0),
    ];
    Table { cols: &[("list", T), ("items", I)], rows: items.iter().map(|(k, n)| vec![v(k), v(n)]).collect() }
}

fn state(shared: &Shared) -> Table {
    let paused = *shared.paused.borrow();
    let yes_no = |b: bool| v(if b { "yes" } else { "no" });
    let rows = vec![
        vec![v("active"), yes_no(!paused)],
        vec![v("paused"), yes_no(paused)],
        vec![v("suspended"), yes_no(false)],
    ];
    Table { cols: &[("key", T), ("value", T)], rows }
}

/// Settings reachable by a RELOAD; the listeners need a restart.
fn changeable(key: &str) -> bool {
    !matches!(key, "listen" | "workers" | "admin.listen")
}

fn config(shared: &Shared) -> Table {
    let current = flat(&shared.runtime.load().config.redacted_toml());
    let defaults = flat(&crate::config::Config::default().redacted_toml());
    let rows = current
        .into_iter()
        .map(|(k, val)| {
            let d = defaults.get(&k).cloned();
            let c = if changeable(&k) { "yes" } else { "no" };
            vec![v(&k), v(val), d, v(c)]
        })
        .collect();
    Table { cols: &[("key", T), ("value", T), ("default", T), ("changeable", T)], rows }
}

/// `section.key = value` pairs; `[proxy]` keys keep their bare (PgBouncer) names.
fn flat(toml_text: &str) -> BTreeMap<String, String> {
    fn walk(prefix: &str, t: &toml::Table, out: &mut BTreeMap<String, String>) {
        for (k, val) in t {
            let key = match prefix {
                "" | "proxy" => k.clone(),
                p => format!("{p}.{k}"),
            };
            match val {
                toml::Value::Table(sub) => walk(if prefix.is_empty() { k } else { &key }, sub, out),
                toml::Value::String(s) => {
                    out.insert(key, s.clone());
                }
                other => {
                    out.insert(key, other.to_string());
                }
            }
        }
    }
    let mut out = BTreeMap::new();
    if let Ok(t) = toml::from_str::<toml::Table>(toml_text) {
        walk("", &t, &mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_config_uses_pgbouncer_names_for_proxy_keys() {
        let f = flat(&crate::config::Config::default().redacted_toml());
        assert_eq!(f.get("default_pool_size").map(String::as_str), Some("20"));
        assert_eq!(f.get("max_client_conn").map(String::as_str), Some("10000"));
        assert!(f.contains_key("admin.listen"));
    }
}
