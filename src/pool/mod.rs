//! Server connection pools: one per (backend, user, database), the registry that keeps them
//! across reloads, and the backends with their health.

mod clean;
pub mod cluster;
pub mod databases;
pub mod health;
pub mod limit;
#[allow(clippy::module_inception)]
mod pool;
mod refusal;
mod upkeep;

pub use clean::SESSION_RESET;
pub use cluster::{Backend, Role};
pub use pool::{Lease, Pool, PoolSettings, PoolSnapshot};

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::auth::UserEntry;
use crate::server::{LoginSpec, ServerError};
use crate::tls::ServerTls;

/// Why a client could not get a server connection.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// No connection became free within `query_wait_timeout`.
    #[error("no server connection available within {0:?} (query_wait_timeout)")]
    WaitTimeout(Duration),
    /// The client cancelled while waiting.
    #[error("canceled while waiting for a server connection")]
    Canceled,
    /// Opening a new connection failed.
    #[error(transparent)]
    Server(#[from] ServerError),
    /// The pool was shut down.
    #[error("pool closed")]
    Closed,
    /// A database or user limit stayed full for `query_wait_timeout`.
    #[error("no server connection within {waited:?}: {limit} reached")]
    Limit {
        /// The setting, its value and its subject.
        limit: String,
        /// How long the client waited.
        waited: Duration,
    },
}

/// Identity of a pool.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    /// `host:port` of the backend.
    pub address: String,
    /// Role name.
    pub user: String,
    /// Database name on the server.
    pub database: String,
    /// The client-facing database name (`[databases]` key) the pool serves.
    pub name: String,
}

/// Every pool in the process, kept across reloads so warm connections survive them.
#[derive(Default)]
pub struct Pools {
    map: Mutex<HashMap<PoolKey, Arc<Pool>>>,
    conn_ids: Arc<AtomicU64>,
    /// Limits per database and per user, spanning pools.
    pub limits: limit::Limits,
}

/// What a pool needs besides its key: limits, TLS, and the user entry to log in with.
pub struct PoolParams<'a> {
    /// Limits and timeouts.
    pub settings: PoolSettings,
    /// Server-side TLS, if any.
    pub tls: Option<Arc<ServerTls>>,
    /// Bound on connect + login.
    pub connect_timeout: Duration,
    /// The user's entry (the role server connections log in as).
    pub user: &'a Arc<UserEntry>,
    /// The database name on the server.
    pub database: &'a str,
    /// The client-facing database name.
    pub name: &'a str,
    /// `max_db_connections` for `name` (0 = none).
    pub max_db_connections: usize,
    /// `max_user_connections` for the user (0 = none).
    pub max_user_connections: usize,
}

impl Pools {
    /// The pool for (backend, user, database), created on first use.
    pub fn get(&self, backend: &Backend, p: PoolParams<'_>) -> Arc<Pool> {
        let key = PoolKey {
            address: backend.address.clone(),
            user: p.user.name.clone(),
            database: p.database.into(),
            name: p.name.into(),
        };
        let db_limit = self.limits.db_conns(p.name, p.max_db_connections);
        let user_limit = self.limits.user_conns(&p.user.name, p.max_user_connections);
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(pool) = map.get(&key) {
            return pool.clone();
        }
        let spec = LoginSpec {
            address: backend.address.clone(),
            backend_name: backend.name.clone(),
            user: p.user.clone(),
            database: p.database.into(),
            connect_timeout: p.connect_timeout,
            tls: p.tls,
        };
        let pool = Pool::new(spec, p.settings, self.conn_ids.clone(), vec![db_limit, user_limit]);
        map.insert(key, pool.clone());
        pool
    }

    /// Every pool with its key.
    pub fn entries(&self) -> Vec<(PoolKey, Arc<Pool>)> {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).iter().map(|(k, p)| (k.clone(), p.clone())).collect()
    }

    /// Every pool.
    pub fn all(&self) -> Vec<Arc<Pool>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).values().cloned().collect()
    }

    /// Removes pools for which `keep` says no, retiring them.
    pub fn retain(&self, mut keep: impl FnMut(&PoolKey, &Pool) -> bool) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|k, p| {
            let k_ = keep(k, p);
            if !k_ {
                p.retire();
            }
            k_
        });
    }
}
