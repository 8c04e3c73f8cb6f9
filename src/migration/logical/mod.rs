//! Logical sync: the target kept in step by PostgreSQL's own logical replication (a publication
//! on the serving server, a subscription on the other), so the copies are identical whatever the
//! SQL computed. pgshift creates, flips and removes the publications and subscriptions; this
//! module holds their names, the admin connections and the progress every session can read.

pub mod flip;
pub mod monitor;
pub mod schema;
pub mod setup;

use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use crate::config::MigrationConfig;
use crate::server::ServerConn;
use crate::shared::Runtime;

/// The publication pgshift creates in each moved database, on the source and on the target.
pub const PUBLICATION: &str = "pgshift_pub";

/// The engine a migration runs on, chosen when it enters dual_write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SyncMode {
    /// pgshift replays committed write transactions on the other server.
    #[default]
    Statement,
    /// PostgreSQL's logical replication.
    Logical,
}

impl SyncMode {
    /// Name as in the API.
    pub fn name(self) -> &'static str {
        match self {
            SyncMode::Statement => "statement",
            SyncMode::Logical => "logical",
        }
    }
}

/// Which way changes flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Source to target (dual_write, shift_reads).
    Forward,
    /// Target to source (cutover, so that a rollback finds an up-to-date source).
    Reverse,
}

impl Direction {
    /// The subscription (and its slot) for `database` in this direction.
    pub fn subscription(self, database: &str) -> String {
        let prefix = match self {
            Direction::Forward => "pgshift_fwd",
            Direction::Reverse => "pgshift_rev",
        };
        // Slot names allow [a-z0-9_] only: a readable part of the name plus a hash of all of it.
        let readable: String = database
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' })
            .take(32)
            .collect();
        let hash =
            database.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
        format!("{prefix}_{readable}_{:08x}", hash as u32)
    }

    /// The server that publishes in this direction.
    pub fn publisher(self) -> Store {
        match self {
            Direction::Forward => Store::Source,
            Direction::Reverse => Store::Target,
        }
    }

    /// The server that subscribes.
    pub fn subscriber(self) -> Store {
        match self {
            Direction::Forward => Store::Target,
            Direction::Reverse => Store::Source,
        }
    }

    fn code(self) -> u8 {
        match self {
            Direction::Forward => 1,
            Direction::Reverse => 2,
        }
    }
}

/// One of the two servers of a migration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Store {
    /// The database being moved from (the default cluster's primary).
    Source,
    /// The database being moved to.
    Target,
}

impl Store {
    /// Name as in messages.
    pub fn name(self) -> &'static str {
        match self {
            Store::Source => "source",
            Store::Target => "target",
        }
    }
}

/// Why a logical-sync step failed.
#[derive(Debug, thiserror::Error)]
pub enum LogicalError {
    /// No admin connection could be made.
    #[error("cannot connect to the {store} for database {database:?}: {message}")]
    Connect {
        /// Which server.
        store: &'static str,
        /// Which database.
        database: String,
        /// Why.
        message: String,
    },
    /// A server refused a statement.
    #[error("the {store} refused {what} in database {database:?}: {message}")]
    Sql {
        /// Which server.
        store: &'static str,
        /// Which database.
        database: String,
        /// What pgshift was doing.
        what: String,
        /// PostgreSQL's message.
        message: String,
    },
}

/// Progress of one moved database, as the monitor last saw it.
#[derive(Debug, Default)]
pub struct DbSync {
    /// The database name on the servers.
    pub database: String,
    /// 0: no replication, 1: forward, 2: reverse.
    direction: AtomicU8,
    /// The publisher's WAL insert position at the last sample.
    pub publisher_lsn: AtomicU64,
    /// Up to where the subscriber has applied the publisher's WAL (publisher positions).
    pub applied_lsn: AtomicU64,
    /// When the last sample was sent (monotonic ms); 0: none yet.
    pub sampled_at: AtomicU64,
    /// Tables in the subscription, and those whose initial copy is complete.
    pub tables_total: AtomicU32,
    /// See `tables_total`.
    pub tables_ready: AtomicU32,
    /// The last monitoring error, if the last sample failed.
    pub last_error: Mutex<Option<String>>,
}

impl DbSync {
    /// The direction changes flow in now, if any.
    pub fn direction(&self) -> Option<Direction> {
        match self.direction.load(Ordering::Acquire) {
            1 => Some(Direction::Forward),
            2 => Some(Direction::Reverse),
            _ => None,
        }
    }

    /// Records the direction (None: replication removed); forgets the samples of the other one.
    pub fn set_direction(&self, d: Option<Direction>) {
        self.direction.store(d.map_or(0, Direction::code), Ordering::Release);
        self.sampled_at.store(0, Ordering::Release);
        self.applied_lsn.store(0, Ordering::Release);
    }

    /// Bytes of the publisher's WAL the subscriber has not applied yet (None: unknown).
    pub fn lag_bytes(&self) -> Option<u64> {
        if self.sampled_at.load(Ordering::Acquire) == 0 {
            return None;
        }
        let applied = self.applied_lsn.load(Ordering::Acquire);
        (applied > 0).then(|| self.publisher_lsn.load(Ordering::Acquire).saturating_sub(applied))
    }
}

/// The databases logical sync moves, with their progress.
#[derive(Debug, Default)]
pub struct Logical {
    dbs: RwLock<Vec<Arc<DbSync>>>,
}

impl Logical {
    /// Every moved database.
    pub fn all(&self) -> Vec<Arc<DbSync>> {
        self.dbs.read().map(|d| d.clone()).unwrap_or_default()
    }

    /// The progress of `database`, if logical sync moves it.
    pub fn get(&self, database: &str) -> Option<Arc<DbSync>> {
        self.dbs.read().ok()?.iter().find(|d| d.database == database).cloned()
    }

    /// The entry of `database`, created when new.
    pub fn entry(&self, database: &str) -> Arc<DbSync> {
        if let Some(d) = self.get(database) {
            return d;
        }
        let d = Arc::new(DbSync { database: database.to_string(), ..Default::default() });
        if let Ok(mut all) = self.dbs.write() {
            all.push(d.clone());
        }
        d
    }
}

/// The databases a migration moves: `[migration] databases`, else the `[databases]` entries of
/// the default cluster (by their server-side names).
pub fn databases(rt: &Runtime, cfg: &MigrationConfig) -> Vec<String> {
    if !cfg.databases.is_empty() {
        return cfg.databases.clone();
    }
    let mut out: Vec<String> = Vec::new();
    for (name, d) in &rt.config.databases {
        let on_default = d.cluster.as_deref().is_none_or(|c| c == crate::config::DEFAULT_CLUSTER);
        let server_db = d.dbname.clone().unwrap_or_else(|| name.clone());
        if name != "*" && on_default && !out.contains(&server_db) {
            out.push(server_db);
        }
    }
    out
}

/// An admin connection to `store`'s primary, as `[migration] admin_user`.
pub async fn connect(rt: &Runtime, store: Store, database: &str) -> Result<ServerConn, LogicalError> {
    let fail = |message: String| LogicalError::Connect { store: store.name(), database: database.into(), message };
    let backend = match store {
        Store::Source => rt.primary.clone(),
        Store::Target => rt.targets.first().cloned().ok_or_else(|| fail("no migration target configured".into()))?,
    };
    let admin = rt.config.migration.as_ref().map(|m| m.admin_user.as_str()).unwrap_or_default();
    let user = rt.users.get(admin).ok_or_else(|| fail(format!("admin_user {admin:?} is not a configured user")))?;
    super::own_connection(rt, &backend, user, database).await.map_err(fail)
}

/// The libpq connection string a subscriber uses to reach `store` (as pgshift reaches it), with
/// the admin user's password. Only ever sent to the other server, never logged.
pub fn conninfo(rt: &Runtime, store: Store, database: &str) -> Option<String> {
    let backend = match store {
        Store::Source => rt.primary.clone(),
        Store::Target => rt.targets.first()?.clone(),
    };
    let admin = &rt.config.migration.as_ref()?.admin_user;
    let password = rt.users.get(admin)?.plaintext.clone()?;
    let (host, port) = backend.address.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let quote = |v: &str| format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"));
    Some(format!(
        "host={} port={} dbname={} user={} password={}",
        quote(host),
        quote(port),
        quote(database),
        quote(admin),
        quote(&password)
    ))
}

/// `'text'` as an SQL string literal.
pub fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscription_names_are_valid_slot_names_and_distinct() {
        let a = Direction::Forward.subscription("App-Prod");
        let b = Direction::Forward.subscription("app_prod");
        let c = Direction::Reverse.subscription("App-Prod");
        for n in [&a, &b, &c] {
            assert!(
                n.len() <= 63 && n.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
                "{n}"
            );
        }
        assert!(a != b && a != c);
        let long = Direction::Forward.subscription(&"x".repeat(200));
        assert!(long.len() <= 63, "{long}");
    }

    #[test]
    fn literals_escape_quotes() {
        assert_eq!(literal("it's"), "'it''s'");
    }
}
