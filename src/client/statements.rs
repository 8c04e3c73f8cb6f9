//! A client's named protocol-level statements, held behind one pointer until it prepares one.

use bytes::Bytes;
// foldhash, not std's SipHash: a short name hashes in a few instructions, and the per-map random
// seed still keeps a client from choosing names that collide.
use foldhash::HashMap;
use std::sync::Arc;

use crate::session_state::{Settings, StmtDef};

/// Where clients may share the server copies of a statement: the same database, role and
/// settings. PostgreSQL resolves names under the search path and folds literals under the settings
/// in force when it parses (`'2024-01-01 00:00'::timestamptz` under TimeZone, `'01/02/2024'::date`
/// under DateStyle), so another client's copy could give another answer; parsing as another role
/// may succeed where this one's would fail. `application_name` changes no parse and is left out.
pub fn scope(database: &str, user: &str, settings: &Settings) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    for part in [database, user] {
        out.extend_from_slice(part.as_bytes());
        out.push(0);
    }
    for (k, v) in settings.iter().filter(|(k, _)| k.as_str() != "application_name") {
        for part in [k, v] {
            out.extend_from_slice(part.as_bytes());
            out.push(0);
        }
    }
    out.push(0); // no name is empty: this ends the settings
    out
}

/// Client name -> proxy-wide definition. Most clients never name a statement (or are idle):
/// the map is allocated with the first one and freed when the client drops them all, so an
/// idle client's task carries 8 bytes here instead of a map's 48.
#[derive(Debug, Default)]
#[allow(clippy::box_collection)] // the point: one pointer inline while there is no map
pub struct NamedStatements(Option<Box<HashMap<Bytes, Arc<StmtDef>>>>);

impl NamedStatements {
    /// The definition a client name stands for.
    pub fn get(&self, name: &[u8]) -> Option<&Arc<StmtDef>> {
        self.0.as_ref()?.get(name)
    }

    /// Whether the client holds a statement of this name.
    pub fn contains_key(&self, name: &[u8]) -> bool {
        self.get(name).is_some()
    }

    /// How many the client holds.
    pub fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |m| m.len())
    }

    /// True when the client holds none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds or replaces one; returns the one replaced.
    pub fn insert(&mut self, name: Bytes, def: Arc<StmtDef>) -> Option<Arc<StmtDef>> {
        self.0.get_or_insert_default().insert(name, def)
    }

    /// Removes one; the map goes with the last.
    pub fn remove(&mut self, name: &[u8]) -> Option<Arc<StmtDef>> {
        let map = self.0.as_mut()?;
        let def = map.remove(name);
        if map.is_empty() {
            self.0 = None;
        }
        def
    }

    /// Drops them all (DISCARD ALL, DEALLOCATE ALL).
    pub fn clear(&mut self) {
        self.0 = None;
    }

    /// Every (client name, definition), in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&Bytes, &Arc<StmtDef>)> {
        self.0.iter().flat_map(|m| m.iter())
    }
}

impl FromIterator<(Bytes, Arc<StmtDef>)> for NamedStatements {
    fn from_iter<I: IntoIterator<Item = (Bytes, Arc<StmtDef>)>>(it: I) -> Self {
        let map: HashMap<_, _> = it.into_iter().collect();
        NamedStatements((!map.is_empty()).then(|| Box::new(map)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defs() -> Vec<Arc<StmtDef>> {
        let reg = crate::session_state::PreparedRegistry::default();
        let cfg = crate::router::ClassifierConfig::default();
        let class = || Arc::new(crate::router::classify("select 1", &cfg));
        (0..3).map(|i| reg.intern(b"db", format!("select {i}\0\0\0").as_bytes(), class)).collect()
    }

    #[test]
    fn scopes_differ_by_role_and_settings_but_not_application_name() {
        let mut tz = Settings::new();
        tz.insert("timezone".into(), "'Asia/Tokyo'".into());
        let mut named = Settings::new();
        named.insert("application_name".into(), "'x'".into());
        let base = scope("db", "app", &Settings::new());
        assert_eq!(base, scope("db", "app", &named));
        assert_ne!(base, scope("db", "other", &Settings::new()));
        assert_ne!(base, scope("db", "app", &tz));
    }

    #[test]
    fn the_map_exists_only_while_a_statement_does() {
        let d = defs();
        let mut s = NamedStatements::default();
        assert!(s.0.is_none() && s.is_empty() && s.get(b"a").is_none());
        assert!(s.insert(Bytes::from_static(b"a"), d[0].clone()).is_none());
        assert!(s.insert(Bytes::from_static(b"b"), d[1].clone()).is_none());
        assert_eq!(s.len(), 2);
        assert!(s.contains_key(b"a"));
        assert_eq!(s.remove(b"a").map(|d| d.id), Some(d[0].id));
        assert!(s.remove(b"a").is_none());
        assert!(s.0.is_some());
        assert_eq!(s.remove(b"b").map(|d| d.id), Some(d[1].id));
        assert!(s.0.is_none(), "the last removal frees the map");
        s.insert(Bytes::from_static(b"c"), d[2].clone());
        s.clear();
        assert!(s.0.is_none() && s.iter().next().is_none());
    }
}
