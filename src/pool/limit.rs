//! Limits that span pools: server connections per database and per user (`max_db_connections`,
//! `max_user_connections`), and clients per database and per user (`max_db_client_connections`,
//! `max_user_client_connections`), with PgBouncer's meanings.
//!
//! A server-connection limit is a counter every pool under it takes from when it opens a
//! connection and gives back when one closes. A client blocked by it waits (bounded by
//! `query_wait_timeout`) and, meanwhile, asks the other pools under the limit to close an idle
//! connection so the slot can come to it. A client limit is checked once, at login.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use tokio::sync::Notify;

use super::Pool;

/// A count of server connections under a bound (0 = no bound, still counted).
pub struct ConnLimit {
    /// The setting and what it applies to, for errors: `max_db_connections = 5 for database "app"`.
    setting: &'static str,
    /// The database or user name.
    subject: String,
    /// "database" or "user".
    kind: &'static str,
    max: AtomicUsize,
    open: AtomicUsize,
    /// Woken when a connection under the limit closes.
    pub freed: Notify,
    members: Mutex<Vec<Weak<Pool>>>,
}

impl ConnLimit {
    fn new(setting: &'static str, kind: &'static str, subject: &str) -> ConnLimit {
        ConnLimit {
            setting,
            subject: subject.into(),
            kind,
            max: AtomicUsize::new(0),
            open: AtomicUsize::new(0),
            freed: Notify::new(),
            members: Mutex::new(Vec::new()),
        }
    }

    /// Counts one more connection if the bound allows it.
    pub fn try_take(&self) -> bool {
        let max = self.max.load(Ordering::Relaxed);
        self.open.fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| (max == 0 || n < max).then_some(n + 1)).is_ok()
    }

    /// A connection counted by [`ConnLimit::try_take`] closed.
    pub fn release(&self) {
        let _ = self.open.fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| n.checked_sub(1));
        self.freed.notify_waiters();
    }

    /// Connections counted now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// The bound (0 = none).
    pub fn max(&self) -> usize {
        self.max.load(Ordering::Relaxed)
    }

    /// For the error a client gets: which setting, its value, and what it applies to.
    pub fn describe(&self) -> String {
        format!("{} = {} for {} \"{}\"", self.setting, self.max(), self.kind, self.subject)
    }

    /// Asks another pool under this limit to close one idle connection, so that a client
    /// blocked by the limit can open one; true if one was closed.
    pub fn evict_idle(&self, except: &Pool) -> bool {
        let members: Vec<Arc<Pool>> = {
            let mut m = self.members.lock().unwrap_or_else(|e| e.into_inner());
            m.retain(|w| w.strong_count() > 0);
            m.iter().filter_map(Weak::upgrade).collect()
        };
        members.iter().filter(|p| !std::ptr::eq(p.as_ref(), except)).any(|p| p.close_one_idle())
    }

    /// Registers a pool that counts its connections here.
    pub fn join(&self, pool: &Arc<Pool>) {
        self.members.lock().unwrap_or_else(|e| e.into_inner()).push(Arc::downgrade(pool));
    }
}

/// Clients connected under one bound; a guard per client gives its place back when dropped.
pub struct ClientLimit {
    setting: &'static str,
    kind: &'static str,
    subject: String,
    max: AtomicUsize,
    count: AtomicUsize,
}

/// A client's place under a [`ClientLimit`].
pub struct ClientSlot(Arc<ClientLimit>);

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let _ = self.0.count.fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| n.checked_sub(1));
    }
}

impl ClientLimit {
    /// A place for one more client, or the description of the bound it would pass.
    pub fn enter(self: &Arc<Self>) -> Result<ClientSlot, String> {
        let max = self.max.load(Ordering::Relaxed);
        match self.count.fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| (max == 0 || n < max).then_some(n + 1)) {
            Ok(_) => Ok(ClientSlot(self.clone())),
            Err(_) => Err(format!("{} = {max} for {} \"{}\"", self.setting, self.kind, self.subject)),
        }
    }

    /// Clients counted now.
    pub fn count(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// The bound (0 = none).
    pub fn max(&self) -> usize {
        self.max.load(Ordering::Relaxed)
    }
}

/// Every limit by database and by user, kept for the life of the process (bounds change on reload).
#[derive(Default)]
pub struct Limits {
    db_conns: Mutex<HashMap<String, Arc<ConnLimit>>>,
    user_conns: Mutex<HashMap<String, Arc<ConnLimit>>>,
    db_clients: Mutex<HashMap<String, Arc<ClientLimit>>>,
    user_clients: Mutex<HashMap<String, Arc<ClientLimit>>>,
}

fn entry<T>(map: &Mutex<HashMap<String, Arc<T>>>, name: &str, make: impl FnOnce() -> T) -> Arc<T> {
    let mut m = map.lock().unwrap_or_else(|e| e.into_inner());
    m.entry(name.to_string()).or_insert_with(|| Arc::new(make())).clone()
}

impl Limits {
    /// The server-connection limit of a client-facing database, with its current bound.
    pub fn db_conns(&self, db: &str, max: usize) -> Arc<ConnLimit> {
        let l = entry(&self.db_conns, db, || ConnLimit::new("max_db_connections", "database", db));
        l.max.store(max, Ordering::Relaxed);
        l
    }

    /// The server-connection limit of a user, with its current bound.
    pub fn user_conns(&self, user: &str, max: usize) -> Arc<ConnLimit> {
        let l = entry(&self.user_conns, user, || ConnLimit::new("max_user_connections", "user", user));
        l.max.store(max, Ordering::Relaxed);
        l
    }

    /// The client limit of a client-facing database, with its current bound.
    pub fn db_clients(&self, db: &str, max: usize) -> Arc<ClientLimit> {
        let make = || client_limit("max_db_client_connections", "database", db);
        let l = entry(&self.db_clients, db, make);
        l.max.store(max, Ordering::Relaxed);
        l
    }

    /// The client limit of a user, with its current bound.
    pub fn user_clients(&self, user: &str, max: usize) -> Arc<ClientLimit> {
        let l = entry(&self.user_clients, user, || client_limit("max_user_client_connections", "user", user));
        l.max.store(max, Ordering::Relaxed);
        l
    }

    /// Clients and server connections counted per database, for SHOW DATABASES.
    pub fn db_counts(&self, db: &str) -> (usize, usize) {
        let conns = self.db_conns.lock().unwrap_or_else(|e| e.into_inner()).get(db).map_or(0, |l| l.open());
        let clients = self.db_clients.lock().unwrap_or_else(|e| e.into_inner()).get(db).map_or(0, |l| l.count());
        (conns, clients)
    }
}

impl Pool {
    /// Counts a new connection against every limit, or none of them.
    pub(super) fn take_limits(&self) -> bool {
        for (i, l) in self.limits.iter().enumerate() {
            if !l.try_take() {
                self.limits[..i].iter().for_each(|l| l.release());
                return false;
            }
        }
        true
    }

    /// A connection counted by [`Pool::take_limits`] closed.
    pub(super) fn release_limits(&self) {
        self.limits.iter().for_each(|l| l.release());
    }

    /// The full limit that keeps this pool's waiters waiting although the pool has room.
    pub(super) fn blocking_limit(&self, s: &super::PoolSettings) -> Option<Arc<ConnLimit>> {
        if self.lock().open >= s.size {
            return None;
        }
        self.limits.iter().find(|l| l.max() > 0 && l.open() >= l.max()).cloned()
    }

    /// A slot for a waiter, if the pool has room and every limit allows one more.
    pub(super) fn take_limited_slot(&self, s: &super::PoolSettings) -> bool {
        let mut inner = self.lock();
        if inner.open < s.size && self.take_limits() {
            inner.open += 1;
            inner.connecting += 1;
            return true;
        }
        false
    }

    /// Closes the longest-idle connection, if any (another pool's client needs the slot).
    pub fn close_one_idle(&self) -> bool {
        let c = {
            let mut inner = self.lock();
            if inner.idle.is_empty() {
                return false;
            }
            inner.idle.remove(0)
        };
        self.discard(c);
        true
    }
}

fn client_limit(setting: &'static str, kind: &'static str, subject: &str) -> ClientLimit {
    ClientLimit { setting, kind, subject: subject.into(), max: AtomicUsize::new(0), count: AtomicUsize::new(0) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conn_limit_counts_and_bounds() {
        let l = Limits::default();
        let a = l.db_conns("app", 2);
        assert!(a.try_take() && a.try_take());
        assert!(!a.try_take());
        a.release();
        assert!(a.try_take());
        assert_eq!(a.describe(), "max_db_connections = 2 for database \"app\"");
        // the same limit object across reloads, with the new bound
        assert!(Arc::ptr_eq(&a, &l.db_conns("app", 0)));
        assert!(a.try_take(), "0 = no bound");
    }

    #[test]
    fn client_limit_gives_places_back() {
        let l = Limits::default();
        let u = l.user_clients("bob", 1);
        let first = u.enter().unwrap();
        let e = u.enter().err().unwrap();
        assert!(e.contains("max_user_client_connections = 1"), "{e}");
        drop(first);
        assert!(u.enter().is_ok());
    }
}
