//! PgBouncer's `[databases]` and `[users]`: each database entry onto `[databases.NAME]` on the
//! cluster of its hosts, each user entry onto `[users.NAME]`.
//!
//! The host set most entries use (the first on a tie) becomes `[primary]` plus `[[replicas]]`,
//! which is the cluster `default`; every other host set becomes `[clusters.NAME]`, named after its
//! first host. The hosts of one set are a primary and its replicas to pgshift: role discovery
//! finds which is which.

use std::net::IpAddr;
use toml::Value;

use super::ini::{parse_connstr, Entry, Ini};
use super::{NoteKind, Output, Sect, Table};
use crate::config::{Dur, DEFAULT_CLUSTER};

type At<'a> = &'a dyn Fn(&Entry) -> String;

/// A PostgreSQL server named by a `[databases]` entry.
type HostPort = (String, u16);

/// PgBouncer connects without `host=` over its unix socket; pgshift connects over TCP here.
const NO_HOST: &str = "127.0.0.1";

/// A `[databases]` entry whose hosts could be read.
struct DbEntry<'a> {
    entry: &'a Entry,
    /// The client-facing name (PgBouncer's double quotes removed).
    name: String,
    kv: Vec<(String, String)>,
    /// In the order written, each once.
    hosts: Vec<HostPort>,
}

impl DbEntry<'_> {
    /// The last value of `key` (PgBouncer keeps the last one).
    fn get(&self, key: &str) -> Option<&str> {
        self.kv.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// "[databases] app = host=db password=<redacted>", for notes.
    fn shown(&self) -> String {
        let kv: Vec<String> = self.kv.iter().map(|(k, v)| format!("{k}={}", redact(k, v))).collect();
        format!("[databases] {} = {}", self.name, kv.join(" "))
    }

    /// Where the table of this entry came from: "pgbouncer.ini:5 [databases] app".
    fn origin(&self, at: At) -> String {
        format!("{} [databases] {}", at(self.entry), self.name)
    }
}

fn redact<'v>(key: &str, value: &'v str) -> &'v str {
    if key == "password" {
        "<redacted>"
    } else {
        value
    }
}

/// One `key=value` of an entry being mapped: where it is and how a note shows it.
struct Item {
    /// "pgbouncer.ini:5".
    at: String,
    /// "[databases] app pool_size=5" (a password redacted).
    setting: String,
    /// "pgbouncer.ini:5 pool_size", the comment of the value written.
    from: String,
}

impl Item {
    fn new(at: String, section: &str, name: &str, key: &str, value: &str) -> Item {
        let setting = format!("[{section}] {name} {key}={}", redact(key, value));
        let from = format!("{at} {key}");
        Item { at, setting, from }
    }

    /// Writes `value` as `t.key`, or notes why it cannot be.
    fn put(&self, t: &mut Table, key: &'static str, value: Result<Value, String>, out: &mut Output) {
        match value {
            Ok(v) => t.set(key, v, self.from.clone()),
            Err(why) => self.not_mapped(why, out),
        }
    }

    fn not_mapped(&self, why: impl Into<String>, out: &mut Output) {
        out.note(NoteKind::NotMapped, &self.at, self.setting.clone(), why);
    }
}

/// A distinct set of hosts and the entries (indexes) on it.
struct HostSet {
    hosts: Vec<HostPort>,
    /// The hosts sorted: `host=a,b` and `host=b,a` are the same servers.
    key: Vec<HostPort>,
    entries: Vec<usize>,
    /// `None` for the cluster `default`.
    name: Option<String>,
}

/// `[databases]` onto `[primary]`, `[[replicas]]`, `[clusters.*]` and `[databases.*]`.
pub fn databases(ini: &Ini, at: At, out: &mut Output) {
    let entries: Vec<DbEntry> = ini.section("databases").filter_map(|e| read_entry(e, at, out)).collect();
    if entries.is_empty() {
        let why = "no database with a host in the ini: set [primary] host and port";
        return out.note(NoteKind::NotMapped, "(no [databases] entry)", "[primary]".into(), why);
    }
    let sets = host_sets(&entries);
    for set in &sets {
        let first = &entries[set.entries[0]];
        match &set.name {
            None => write_default(set, first, at, out),
            Some(name) => write_cluster(set, name, first, at, out),
        }
        if set.hosts.len() > 1 {
            let why = "several hosts: PgBouncer spreads connections over them; pgshift asks each for its role, \
                       sends writes to the primary and proven reads to the others";
            let setting = format!("[databases] {} host={}", first.name, first.get("host").unwrap_or_default());
            out.note(NoteKind::Different, &at(first.entry), setting, why);
        }
    }
    for (i, d) in entries.iter().enumerate() {
        let cluster = sets.iter().find(|s| s.entries.contains(&i)).and_then(|s| s.name.as_deref());
        write_database(d, cluster, at, out);
    }
}

/// Parses an entry and its hosts; a note and `None` when it cannot be mapped at all.
fn read_entry<'a>(e: &'a Entry, at: At, out: &mut Output) -> Option<DbEntry<'a>> {
    let name = unquote(&e.key);
    let kv = match parse_connstr(&e.value) {
        Ok(kv) => kv,
        Err(why) => {
            out.note(NoteKind::NotMapped, &at(e), format!("[databases] {name}"), why);
            return None;
        }
    };
    let mut d = DbEntry { entry: e, name, kv, hosts: Vec::new() };
    if d.name == "pgbouncer" || d.name == "pgshift" {
        let why = "the name of pgshift's admin console: the entry is left out";
        out.note(NoteKind::NotMapped, &at(e), d.shown(), why);
        return None;
    }
    d.hosts = read_hosts(&d, at, out)?;
    Some(d)
}

/// `host=` (one host or a comma list) with `port=` (one port for all, or one per host).
fn read_hosts(d: &DbEntry, at: At, out: &mut Output) -> Option<Vec<HostPort>> {
    let hosts: Vec<&str> = d.get("host").unwrap_or_default().split(',').map(str::trim).collect();
    let ports: Vec<&str> = d.get("port").map(|p| p.split(',').map(str::trim).collect()).unwrap_or_default();
    let left_out = |why: &str, out: &mut Output| {
        out.note(NoteKind::NotMapped, &at(d.entry), d.shown(), format!("{why}: the entry is left out"));
    };
    if ports.len() > 1 && ports.len() != hosts.len() {
        left_out("port= lists a different number of ports than host= has hosts", out);
        return None;
    }
    let (mut list, mut socket) = (Vec::new(), false);
    for (i, h) in hosts.iter().enumerate() {
        let port = match ports.get(i).or(ports.first()).map(|p| p.parse::<u16>()) {
            None => 5432,
            Some(Ok(p)) if p > 0 => p,
            Some(_) => {
                left_out("port= is not a port number", out);
                return None;
            }
        };
        let host = if h.is_empty() || h.starts_with('/') || h.starts_with('@') {
            socket = true;
            NO_HOST
        } else {
            h.trim_start_matches('[').trim_end_matches(']')
        };
        let hp = (host.to_string(), port);
        if !list.contains(&hp) {
            list.push(hp);
        }
    }
    if socket {
        let why = format!("no TCP host (PgBouncer connects over its unix socket): pgshift connects to {NO_HOST}");
        out.note(NoteKind::Different, &at(d.entry), d.shown(), why);
    }
    Some(list)
}

/// `"my db"` -> `my db`: PgBouncer lets a database or user name be double-quoted.
fn unquote(key: &str) -> String {
    match key.strip_prefix('"').and_then(|k| k.strip_suffix('"')) {
        Some(inner) => inner.to_string(),
        None => key.to_string(),
    }
}

/// The distinct host sets, the most used first (it is the cluster `default`), the others named.
fn host_sets(entries: &[DbEntry]) -> Vec<HostSet> {
    let mut sets: Vec<HostSet> = Vec::new();
    for (i, d) in entries.iter().enumerate() {
        let mut key = d.hosts.clone();
        key.sort();
        match sets.iter_mut().find(|s| s.key == key) {
            Some(s) => s.entries.push(i),
            None => sets.push(HostSet { hosts: d.hosts.clone(), key, entries: vec![i], name: None }),
        }
    }
    // max_by_key keeps the last of equals: reversed, that is the first in file order.
    let most = sets.iter().enumerate().rev().max_by_key(|(_, s)| s.entries.len()).map(|(i, _)| i);
    if let Some(i) = most {
        let default = sets.remove(i);
        sets.insert(0, default);
    }
    let mut taken = vec![DEFAULT_CLUSTER.to_string()];
    for s in sets.iter_mut().skip(1) {
        let name = cluster_name(&s.hosts[0], &taken);
        taken.push(name.clone());
        s.name = Some(name);
    }
    sets
}

/// A readable cluster name from a host: `10.20.0.12` -> `10-20-0-12`, `db2.example.com` -> `db2`,
/// with `-PORT` when the port is not 5432, and `-2`, `-3`... when the name is taken.
fn cluster_name((host, port): &HostPort, taken: &[String]) -> String {
    let base = match host.parse::<IpAddr>() {
        Ok(_) => host.clone(),
        Err(_) => host.split('.').next().unwrap_or(host).to_string(),
    };
    let base: String =
        base.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' { c } else { '-' }).collect();
    let base = match base.trim_matches('-') {
        "" => "cluster".to_string(),
        b if *port == 5432 => b.to_string(),
        b => format!("{b}-{port}"),
    };
    let mut name = base.clone();
    let mut n = 2;
    while taken.contains(&name) {
        name = format!("{base}-{n}");
        n += 1;
    }
    name
}

/// The cluster `default`: its first host is `[primary]`, the others `[[replicas]]`.
fn write_default(set: &HostSet, first: &DbEntry, at: At, out: &mut Output) {
    let origin = first.origin(at);
    let mut hosts = set.hosts.iter();
    if let Some((host, port)) = hosts.next() {
        out.set(Sect::Primary, "host", Value::String(host.clone()), origin.clone());
        out.set(Sect::Primary, "port", Value::Integer(i64::from(*port)), origin.clone());
    }
    for (host, port) in hosts {
        let mut t = Table::new("[[replicas]]".into(), format!("{origin}: a further host"));
        t.set("host", Value::String(host.clone()), format!("{} host=", at(first.entry)));
        t.set("port", Value::Integer(i64::from(*port)), format!("{} port=", at(first.entry)));
        out.tables.push(t);
    }
}

fn write_cluster(set: &HostSet, name: &str, first: &DbEntry, at: At, out: &mut Output) {
    let mut t = Table::new(format!("[clusters.{}]", table_key(name)), first.origin(at));
    let hosts = set
        .hosts
        .iter()
        .map(|(h, p)| Value::String(if h.contains(':') { format!("[{h}]:{p}") } else { format!("{h}:{p}") }))
        .collect();
    t.set("hosts", Value::Array(hosts), format!("{} host=", at(first.entry)));
    out.tables.push(t);
}

/// A name as a TOML key: bare when it can be, else a quoted string.
fn table_key(name: &str) -> String {
    if !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        name.to_string()
    } else {
        Value::String(name.to_string()).to_string()
    }
}

/// One `[databases.NAME]`: its cluster, server database, forced user and pool settings.
fn write_database(d: &DbEntry, cluster: Option<&str>, at: At, out: &mut Output) {
    let mut t = Table::new(format!("[databases.{}]", table_key(&d.name)), d.origin(at));
    if let Some(c) = cluster {
        t.set("cluster", Value::String(c.to_string()), format!("{} host=", at(d.entry)));
    }
    for (k, v) in &d.kv {
        let item = Item::new(at(d.entry), "databases", &d.name, k, v);
        database_key(d, k, v, &item, &mut t, out);
    }
    out.tables.push(t);
}

fn database_key(d: &DbEntry, k: &str, v: &str, item: &Item, t: &mut Table, out: &mut Output) {
    let text = |v: &str| Ok(Value::String(v.to_string()));
    let why = match k {
        "host" | "port" => return,
        "dbname" if d.name == "*" => {
            "PgBouncer serves every unlisted name from this one database; pgshift's \"*\" serves each name as \
             itself: list the names that need it as entries of their own"
        }
        "dbname" if v == d.name => return,
        "dbname" => return item.put(t, "dbname", text(v), out),
        "user" => return item.put(t, "user", text(v), out),
        "password" if d.get("user").is_some() => return item.put(t, "password", text(v), out),
        "password" => "used only with user= (a forced user): clients log in with their own passwords",
        "pool_size"
        | "min_pool_size"
        | "reserve_pool"
        | "reserve_pool_size"
        | "max_db_connections"
        | "max_db_client_connections" => return item.put(t, count_key(k), number(v), out),
        "pool_mode" => return item.put(t, "pool_mode", pool_mode(v), out),
        "server_lifetime" => {
            let zero = "0 uses each server connection once in PgBouncer; in pgshift 0 is no limit";
            return item.put(t, "server_lifetime", duration(v, Some(zero)), out);
        }
        "load_balance_hosts" => {
            "pgshift does not spread connections over a cluster's hosts: it finds the primary by its role \
             and sends proven reads to the others"
        }
        "client_encoding" | "datestyle" | "timezone" | "application_name" => {
            "not forced: clients' own startup settings are applied; set a default on the role or database"
        }
        "auth_user" | "auth_query" | "auth_dbname" => "auth_user/auth_query are global in pgshift ([auth])",
        "connect_query" => "no equivalent: set session defaults with ALTER ROLE or ALTER DATABASE ... SET",
        _ => "no per-database equivalent in pgshift",
    };
    item.not_mapped(why, out);
}

/// The pgshift key of a whole-number setting of `[databases]` or `[users]`.
fn count_key(k: &str) -> &'static str {
    match k {
        "pool_size" => "pool_size",
        "min_pool_size" => "min_pool_size",
        "reserve_pool" | "reserve_pool_size" => "reserve_pool_size",
        "max_db_connections" => "max_db_connections",
        "max_db_client_connections" => "max_db_client_connections",
        "max_user_connections" => "max_user_connections",
        _ => "max_user_client_connections",
    }
}

fn number(v: &str) -> Result<Value, String> {
    v.parse::<i64>().ok().filter(|n| *n >= 0).map(Value::Integer).ok_or_else(|| "not a whole number".into())
}

fn pool_mode(v: &str) -> Result<Value, String> {
    match v {
        "session" | "transaction" => Ok(Value::String(v.to_string())),
        _ => Err("pgshift pools in transaction or session mode: [proxy] pool_mode applies".into()),
    }
}

/// A duration; `zero` says why 0 cannot be carried over, when it cannot.
fn duration(v: &str, zero: Option<&str>) -> Result<Value, String> {
    let d = Dur::parse(v)?;
    match zero {
        Some(why) if d.0.is_zero() => Err(format!("{why}; the [proxy] value applies")),
        _ => Ok(Value::String(d.to_string())),
    }
}

/// `[users]` onto `[users.NAME]`.
pub fn users(ini: &Ini, at: At, out: &mut Output) {
    for e in ini.section("users") {
        let name = unquote(&e.key);
        let kv = match parse_connstr(&e.value) {
            Ok(kv) => kv,
            Err(why) => {
                out.note(NoteKind::NotMapped, &at(e), format!("[users] {name}"), why);
                continue;
            }
        };
        let mut t = Table::new(format!("[users.{}]", table_key(&name)), format!("{} [users] {name}", at(e)));
        for (k, v) in &kv {
            let item = Item::new(at(e), "users", &name, k, v);
            match k.as_str() {
                "pool_mode" => item.put(&mut t, "pool_mode", pool_mode(v), out),
                "pool_size" | "max_user_connections" | "max_user_client_connections" => {
                    item.put(&mut t, count_key(k), number(v), out)
                }
                "query_timeout" => item.put(&mut t, "query_timeout", duration(v, None), out),
                "reserve_pool" | "reserve_pool_size" => item.not_mapped(
                    "no per-user reserve pool: [proxy] reserve_pool_size, or reserve_pool_size on the database",
                    out,
                ),
                "idle_transaction_timeout" | "client_idle_timeout" => {
                    item.not_mapped(format!("no per-user value: [proxy] {k} applies to every user"), out)
                }
                _ => item.not_mapped("no per-user equivalent in pgshift", out),
            }
        }
        if !t.lines.is_empty() {
            out.tables.push(t);
        }
    }
}
