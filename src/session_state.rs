//! Session state that must follow a client across pooled server connections: settings (SET) and
//! protocol-level prepared statements, plus what each server connection currently holds.
//!
//! In transaction mode a client lands on a different server connection for each transaction. Its
//! settings are kept here and replayed as a diff when it lands somewhere else; its named prepared
//! statements are renamed to proxy-wide names and prepared lazily on whichever server it uses.

use bytes::{BufMut, Bytes, BytesMut};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use crate::router::Classification;
use crate::wire::messages::{put_cstr, put_frame};
use crate::wire::tag;

/// Settings by lower-case GUC name; the value is SQL text ready for `SET name TO <value>`.
///
/// A sorted slice rather than a map: a client holds a handful of settings at most. The slice is
/// shared and copied on write: every idle client carries two of these (what it logged in with and
/// what it holds now, the same until it runs SET), and each server connection takes a copy of the
/// settings of the client it last served. None when empty, so an empty set allocates nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settings(Option<Arc<[(String, String)]>>);

impl Settings {
    /// No settings.
    pub fn new() -> Self {
        Settings(None)
    }
    fn pairs(&self) -> &[(String, String)] {
        self.0.as_deref().unwrap_or(&[])
    }
    fn find(&self, name: &str) -> Result<usize, usize> {
        self.pairs().binary_search_by(|(k, _)| k.as_str().cmp(name))
    }
    /// Changes a copy of the pairs and keeps it (settings change rarely; reads and clones are
    /// what must be cheap).
    fn edit<R>(&mut self, f: impl FnOnce(&mut Vec<(String, String)>) -> R) -> R {
        let mut v = self.pairs().to_vec();
        let r = f(&mut v);
        self.0 = if v.is_empty() { None } else { Some(v.into()) };
        r
    }
    /// Sets `name`; returns the value it replaced.
    pub fn insert(&mut self, name: String, value: String) -> Option<String> {
        match self.find(&name) {
            Ok(i) if self.pairs()[i].1 == value => Some(value),
            Ok(i) => self.edit(|v| Some(std::mem::replace(&mut v[i].1, value))),
            Err(i) => self.edit(|v| {
                v.insert(i, (name, value));
                None
            }),
        }
    }
    /// The value of `name`.
    pub fn get(&self, name: &str) -> Option<&String> {
        self.find(name).ok().map(|i| &self.pairs()[i].1)
    }
    /// Whether `name` is set.
    pub fn contains_key(&self, name: &str) -> bool {
        self.find(name).is_ok()
    }
    /// Unsets `name`; returns its value.
    pub fn remove(&mut self, name: &str) -> Option<String> {
        let i = self.find(name).ok()?;
        self.edit(|v| Some(v.remove(i).1))
    }
    /// Unsets everything.
    pub fn clear(&mut self) {
        self.0 = None;
    }
    /// Keeps the settings `keep` says yes to.
    pub fn retain(&mut self, mut keep: impl FnMut(&String, &mut String) -> bool) {
        if !self.is_empty() {
            self.edit(|v| v.retain_mut(|(k, v)| keep(k, v)));
        }
    }
    /// Names in order.
    pub fn keys(&self) -> impl Iterator<Item = &String> {
        self.pairs().iter().map(|(k, _)| k)
    }
    /// (name, value) in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &String)> {
        self.pairs().iter().map(|(k, v)| (k, v))
    }
    /// How many are set.
    pub fn len(&self) -> usize {
        self.pairs().len()
    }
    /// True when none is set.
    pub fn is_empty(&self) -> bool {
        self.0.is_none()
    }
}

impl<'a> IntoIterator for &'a Settings {
    type Item = (&'a String, &'a String);
    type IntoIter = std::iter::Map<std::slice::Iter<'a, (String, String)>, fn(&'a (String, String)) -> Self::Item>;
    fn into_iter(self) -> Self::IntoIter {
        self.pairs().iter().map(|(k, v)| (k, v))
    }
}

/// Quotes a raw value (from a startup packet or ParameterStatus) as a SQL literal.
pub fn quote_literal(raw: &str) -> String {
    format!("'{}'", raw.replace('\'', "''"))
}

/// GUC names are case-insensitive; we keep them lower-case.
pub fn guc_name(name: &str) -> String {
    name.to_ascii_lowercase()
}

/// Startup parameters that are not settings.
const NOT_SETTINGS: &[&str] = &["user", "database", "replication", "options", "pgshift.route"];

/// Settings asked for in a startup packet, in PostgreSQL's order: the `-c name=value` pairs of
/// `options` first, then the other parameters, a later one replacing an earlier one (asyncpg
/// sends `client_encoding` twice when `server_settings` names it too).
pub fn startup_settings(params: &[(String, String)]) -> Settings {
    let mut s = Settings::new();
    for (_, v) in params.iter().filter(|(k, _)| k.eq_ignore_ascii_case("options")) {
        parse_options(v, &mut s);
    }
    for (k, v) in params {
        let k = guc_name(k);
        if !NOT_SETTINGS.contains(&k.as_str()) && !k.starts_with("_pq_.") {
            s.insert(k, quote_literal(v));
        }
    }
    s
}

/// Why a transaction-mode client must keep one server from its login on: a startup setting no
/// reset between clients undoes. RESET ALL leaves `role` and `session_authorization` (DISCARD
/// ALL, run when a pinned client leaves, resets them), and nothing undoes `seed` (the server is
/// closed instead). The same settings made with SET pin the same way.
pub fn startup_pin(settings: &Settings) -> Option<&'static str> {
    if settings.contains_key("seed") {
        return Some("setseed");
    }
    ["role", "session_authorization"].iter().any(|k| settings.contains_key(k)).then_some("set_role")
}

/// The raw value of a literal made by [`quote_literal`]; `None` for other SQL text.
pub fn unquote_literal(lit: &str) -> Option<String> {
    lit.strip_prefix('\'')?.strip_suffix('\'').map(|s| s.replace("''", "'"))
}

/// Rewrites a startup `client_encoding` in the server's spelling (`utf-8` becomes `UTF8`), as
/// PostgreSQL reports it back; `Err(value)` when PostgreSQL knows no such encoding.
pub fn canonical_startup_encoding(params: &mut [(String, String)]) -> Result<(), String> {
    for (_, v) in params.iter_mut().filter(|(k, _)| k.eq_ignore_ascii_case("client_encoding")) {
        match crate::encoding::canonical(v) {
            Some(c) => *v = c.to_string(),
            None => return Err(v.clone()),
        }
    }
    // `-c client_encoding=...` in `options` (made canonical there when PostgreSQL knows it).
    let from_options = startup_settings(params).get("client_encoding").and_then(|l| unquote_literal(l));
    match from_options {
        Some(v) if crate::encoding::canonical(&v).is_none() => Err(v),
        _ => Ok(()),
    }
}

/// `-c name=value` and `--name=value` pairs; backslash escapes a space.
fn parse_options(options: &str, out: &mut Settings) {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut chars = options.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => cur.extend(chars.next()),
            c if c.is_whitespace() => {
                if !cur.is_empty() {
                    words.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        words.push(cur);
    }
    let mut it = words.into_iter();
    while let Some(w) = it.next() {
        let pair = if w == "-c" { it.next() } else { w.strip_prefix("--").map(str::to_string) };
        if let Some((k, v)) = pair.as_deref().and_then(|p| p.split_once('=')) {
            let k = guc_name(&k.replace('-', "_"));
            let v = if k == "client_encoding" { crate::encoding::canonical(v).unwrap_or(v) } else { v };
            out.insert(k, quote_literal(v));
        }
    }
}

/// The queries, each to be sent as a Query of its own, that turn a server holding `have` into
/// one holding `want`; none when they match. When `have` holds a setting `want` lacks or has
/// another value for, the first is `RESET ALL`: alone it cannot fail, so a SET of `want` that
/// fails (an invalid value) leaves that setting at its default, never at a previous client's.
pub fn settings_diff(have: &Settings, want: &Settings) -> Vec<String> {
    if have == want {
        return Vec::new();
    }
    let stale = have.iter().any(|(k, v)| want.get(k) != Some(v));
    let mut sql = String::new();
    for (k, v) in want {
        if stale || have.get(k) != Some(v) {
            if k == "timezone" {
                // Also takes the forms `SET TIME ZONE` alone accepts (INTERVAL '...' HOUR TO MINUTE).
                sql.push_str(&format!("SET TIME ZONE {v};"));
            } else {
                sql.push_str(&format!("SET {} TO {v};", ident(k)));
            }
        }
    }
    let mut queries = Vec::with_capacity(2);
    if stale {
        queries.push("RESET ALL".to_string());
    }
    if !sql.is_empty() {
        queries.push(sql);
    }
    queries
}

fn ident(name: &str) -> String {
    let simple = name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '.')
        && !name.starts_with(|c: char| c.is_ascii_digit());
    if simple {
        name.to_string()
    } else {
        format!("\"{}\"", name.replace('"', "\"\""))
    }
}

/// A statement prepared under a proxy-wide name, shared by every client that prepared the same
/// text with the same parameter types in the same scope (database, role and settings).
#[derive(Debug)]
pub struct StmtDef {
    /// Set once some server accepted its Parse: another client's Parse of the same statement can
    /// then be answered without a server (PQprepare outside a transaction needs no connection).
    pub validated: std::sync::atomic::AtomicBool,
    /// Unique, random id; the server-side name is [`statement_name`] of it, so no client can
    /// predict the name of a statement prepared later.
    pub id: u64,
    /// The Parse frame with the proxy-wide name, ready to send to any server.
    pub parse_frame: Bytes,
    /// `pgshift_<id>` with its NUL, as it goes into Bind/Describe/Close.
    pub name: Bytes,
    /// The routing decision for the statement's text.
    pub class: Arc<Classification>,
}

impl PartialEq for StmtDef {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
    }
}
impl Eq for StmtDef {}

/// Interns statements by (text, parameter types). Holds them weakly: a definition lives as long
/// as some client still refers to it, so the registry cannot grow without bound.
#[derive(Default)]
pub struct PreparedRegistry {
    map: Mutex<HashMap<Bytes, Weak<StmtDef>>>,
    next_id: AtomicU64,
}

impl PreparedRegistry {
    /// An existing definition in `scope` (see [`crate::client::statements::scope`]) that some
    /// server has accepted, if any.
    pub fn validated(&self, scope: &[u8], tail: &[u8]) -> Option<Arc<StmtDef>> {
        let mut key = Vec::with_capacity(scope.len() + tail.len());
        key.extend_from_slice(scope);
        key.extend_from_slice(tail);
        let map = self.map.lock().ok()?;
        map.get(key.as_slice()).and_then(Weak::upgrade).filter(|d| d.validated.load(Ordering::Relaxed))
    }

    /// The definition for a Parse body tail (`query\0 n types...`) in `scope`, creating it if new.
    pub fn intern(&self, scope: &[u8], tail: &[u8], class: impl FnOnce() -> Arc<Classification>) -> Arc<StmtDef> {
        let mut key = Vec::with_capacity(scope.len() + tail.len());
        key.extend_from_slice(scope);
        key.extend_from_slice(tail);
        let Ok(mut map) = self.map.lock() else {
            return self.make(tail, class()); // poisoned: still serve, just without sharing
        };
        if let Some(def) = map.get(key.as_slice()).and_then(Weak::upgrade) {
            return def;
        }
        let def = self.make(tail, class());
        if map.len() >= 1024 && map.len().is_power_of_two() {
            map.retain(|_, w| w.strong_count() > 0);
        }
        map.insert(Bytes::from(key), Arc::downgrade(&def));
        def
    }

    fn make(&self, tail: &[u8], class: Arc<Classification>) -> Arc<StmtDef> {
        // Random, not a counter: a client that saw one name (pg_prepared_statements) learns
        // nothing about the next. The counter keeps ids of one process distinct.
        let id = (rand::random::<u64>() << 20) ^ self.next_id.fetch_add(1, Ordering::Relaxed);
        let name = statement_name(id);
        let mut parse = BytesMut::with_capacity(tail.len() + name.len() + 6);
        put_frame(&mut parse, tag::PARSE, |b| {
            put_cstr(b, name.as_bytes());
            b.put_slice(tail);
        });
        let mut n = BytesMut::with_capacity(name.len() + 1);
        put_cstr(&mut n, name.as_bytes());
        Arc::new(StmtDef {
            validated: std::sync::atomic::AtomicBool::new(false),
            id,
            parse_frame: parse.freeze(),
            name: n.freeze(),
            class,
        })
    }

    /// Live definitions (for the admin port).
    pub fn len(&self) -> usize {
        self.map.lock().map(|m| m.values().filter(|w| w.strong_count() > 0).count()).unwrap_or(0)
    }

    /// True when nothing is interned.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What one server connection holds beyond its login: settings we set, statements we prepared.
#[derive(Debug)]
pub struct ServerSessionState {
    /// Settings as we last set them (baseline: the reported parameters at login).
    pub settings: Settings,
    /// Statement id -> last-use tick and its definition, bounded by `max_prepared`. Holding the
    /// definition keeps it in the registry while some server has it, so the next client that
    /// prepares the same text gets the same name and no second copy is made on this server.
    /// Keyed by the statements' random ids (foldhash: cheap for a `u64`, looked up every Bind).
    prepared: foldhash::HashMap<u64, (u64, Arc<StmtDef>)>,
    tick: u64,
    max_prepared: usize,
}

impl ServerSessionState {
    /// Empty state with an LRU bound for prepared statements.
    pub fn new(max_prepared: usize) -> Self {
        ServerSessionState { settings: Settings::new(), prepared: foldhash::HashMap::default(), tick: 0, max_prepared }
    }

    /// True if `id` is prepared here (and marks it used).
    pub fn has_prepared(&mut self, id: u64) -> bool {
        self.tick += 1;
        match self.prepared.get_mut(&id) {
            Some((t, _)) => {
                *t = self.tick;
                true
            }
            None => false,
        }
    }

    /// Records `def` as prepared; returns the id evicted to stay within the bound, to be closed.
    pub fn add_prepared(&mut self, def: &Arc<StmtDef>) -> Option<u64> {
        self.tick += 1;
        let evict = if self.prepared.len() >= self.max_prepared.max(1) {
            let oldest = self.prepared.iter().min_by_key(|(_, (t, _))| *t).map(|(&k, _)| k);
            oldest.inspect(|k| {
                self.prepared.remove(k);
            })
        } else {
            None
        };
        self.prepared.insert(def.id, (self.tick, def.clone()));
        evict
    }

    /// Forgets `id` (its Parse failed or was skipped after an error).
    pub fn remove_prepared(&mut self, id: u64) {
        self.prepared.remove(&id);
    }

    /// Forgets every statement (after DISCARD ALL / DEALLOCATE ALL reached the server).
    pub fn clear_prepared(&mut self) {
        self.prepared.clear();
    }

    /// Statements prepared here.
    pub fn prepared_count(&self) -> usize {
        self.prepared.len()
    }
}

/// The server-side name of proxy-wide statement `id`.
pub fn statement_name(id: u64) -> String {
    format!("{}{id:016x}", crate::router::RESERVED_PREFIX)
}

/// The Close frame for a proxy-wide statement name.
pub fn close_statement_frame(id: u64) -> BytesMut {
    let mut out = BytesMut::with_capacity(32);
    put_frame(&mut out, tag::CLOSE, |b| {
        b.put_u8(b'S');
        put_cstr(b, statement_name(id).as_bytes());
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_shared_until_one_copy_changes() {
        let mut a = Settings::new();
        assert!(a.is_empty());
        a.insert("search_path".into(), "'a'".into());
        a.insert("application_name".into(), "'x'".into());
        let mut b = a.clone();
        assert_eq!(a, b);
        assert_eq!(b.insert("search_path".into(), "'b'".into()).as_deref(), Some("'a'"));
        assert_eq!(a.get("search_path").unwrap(), "'a'", "the original is untouched");
        assert_eq!(b.get("search_path").unwrap(), "'b'");
        assert_eq!(b.keys().cloned().collect::<Vec<_>>(), ["application_name", "search_path"], "kept sorted");
        assert_eq!(b.remove("application_name").as_deref(), Some("'x'"));
        assert_eq!(b.remove("search_path").as_deref(), Some("'b'"));
        assert!(b.is_empty() && b == Settings::new(), "emptied, it holds no allocation");
        assert_eq!(a.len(), 2);
    }

    #[test]
    fn startup_settings_skip_identity_and_parse_options() {
        let p = vec![
            ("user".to_string(), "app".to_string()),
            ("application_name".to_string(), "psql".to_string()),
            ("options".to_string(), "-c search_path=a,b --statement-timeout=5s -c x=it\\'s".to_string()),
        ];
        let s = startup_settings(&p);
        assert_eq!(s.get("application_name").unwrap(), "'psql'");
        assert_eq!(s.get("search_path").unwrap(), "'a,b'");
        assert_eq!(s.get("statement_timeout").unwrap(), "'5s'");
        assert_eq!(s.get("x").unwrap(), "'it''s'");
        assert!(!s.contains_key("user"));
    }

    #[test]
    fn startup_parameters_override_options_and_the_last_one_wins() {
        let p = [
            ("client_encoding", "UTF8"),
            ("options", "-c client_encoding=euc-jp -c application_name=from-options"),
            ("client_encoding", "LATIN1"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()));
        let s = startup_settings(&p);
        assert_eq!(s.get("client_encoding").unwrap(), "'LATIN1'");
        assert_eq!(s.get("application_name").unwrap(), "'from-options'");
        assert_eq!(unquote_literal(&quote_literal("it's")).as_deref(), Some("it's"));
        assert_eq!(unquote_literal("myschema, public"), None);
    }

    #[test]
    fn diff_sets_and_resets() {
        let mut have = Settings::new();
        have.insert("application_name".into(), "'a'".into());
        have.insert("timezone".into(), "'UTC'".into());
        let mut want = Settings::new();
        want.insert("timezone".into(), "'UTC'".into());
        want.insert("search_path".into(), "myschema, public".into());
        assert_eq!(
            settings_diff(&have, &want),
            ["RESET ALL", "SET search_path TO myschema, public;SET TIME ZONE 'UTC';"],
            "a setting to undo: everything reset first, then all of want"
        );
        assert!(settings_diff(&want, &want).is_empty());
        let mut more = want.clone();
        more.insert("work_mem".into(), "'64kB'".into());
        assert_eq!(settings_diff(&want, &more), ["SET work_mem TO '64kB';"], "only additions: no reset");
        want.insert("timezone".into(), "INTERVAL '+02:00' HOUR TO MINUTE".into());
        assert_eq!(
            settings_diff(&Settings::new(), &want)[0],
            "SET search_path TO myschema, public;SET TIME ZONE INTERVAL '+02:00' HOUR TO MINUTE;"
        );
    }

    #[test]
    fn lru_evicts_oldest() {
        let r = PreparedRegistry::default();
        let cfg = crate::router::ClassifierConfig::default();
        let def = |sql: &str| r.intern(b"db", sql.as_bytes(), || Arc::new(crate::router::classify(sql, &cfg)));
        let (d1, d2, d3) = (def("select 1"), def("select 2"), def("select 3"));
        let mut s = ServerSessionState::new(2);
        assert_eq!(s.add_prepared(&d1), None);
        assert_eq!(s.add_prepared(&d2), None);
        assert!(s.has_prepared(d1.id));
        assert_eq!(s.add_prepared(&d3), Some(d2.id));
        assert!(!s.has_prepared(d2.id));
    }

    #[test]
    fn a_statement_a_server_holds_keeps_its_name() {
        let r = PreparedRegistry::default();
        let cfg = crate::router::ClassifierConfig::default();
        let def = || r.intern(b"db", b"select $1\0\0\0", || Arc::new(crate::router::classify("select $1", &cfg)));
        let mut s = ServerSessionState::new(8);
        let first = def();
        s.add_prepared(&first);
        let id = first.id;
        drop(first); // the client that prepared it is gone; the server still has it
        assert_eq!(def().id, id, "the next client gets the statement the server already has");
    }
}
