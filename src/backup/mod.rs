//! Logical backups: `pg_dump -Fc` of each configured database from the least-lagged healthy
//! replica, on a schedule and on `POST /backup`, each file checked with `pg_restore --list` and
//! renamed into place, then older files pruned by count and age; and the WAL archiver's status
//! of each cluster's primary, so an operator sees that point-in-time recovery works.
//!
//! One backup runs at a time ([`Backups::try_begin`]). Everything an operator reads (the JSON
//! answer, `/metrics`, the log) names nodes (`replica0`), and never holds the password, which
//! reaches pg_dump only through its environment.

mod archiver;
mod files;
mod node;
mod run;
mod schedule;
mod tools;

pub use files::{file_name, format_ts, parse_ts};
pub use run::run_now;
pub use tools::check;

use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use tokio::sync::{watch, OwnedMutexGuard};
use tokio::task::JoinHandle;

use crate::config::BackupConfig;
use crate::shared::Shared;

/// Why a backup (or the whole request) failed.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// No `[backup]` in the configuration.
    #[error("backups are not configured ([backup] is absent)")]
    NotConfigured,
    /// Another backup holds the lock.
    #[error("a backup is already running")]
    Busy,
    /// A requested name cannot be a file name under `dir`.
    #[error("database {name:?} {why}")]
    BadName {
        /// The name as given.
        name: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// No `[databases]` entry (nor `*`) serves the name.
    #[error("pgshift serves no database named {0:?}")]
    UnknownDatabase(String),
    /// `[backup] user` is not a configured user (a reload removed it).
    #[error("[backup] user {0:?} is not a configured user")]
    User(String),
    /// No node may serve the dump (the reason names each replica's state).
    #[error("{0}")]
    NoNode(String),
    /// The databases of the cluster could not be listed (no `databases` configured).
    #[error("cannot list the databases to back up: {0}")]
    List(String),
    /// pg_dump or pg_restore could not be started.
    #[error("cannot run {tool}: {source}")]
    Spawn {
        /// pg_dump or pg_restore.
        tool: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// pg_dump or pg_restore exited with an error.
    #[error("{tool} failed ({status}): {stderr}")]
    Tool {
        /// pg_dump or pg_restore.
        tool: &'static str,
        /// Its exit status.
        status: String,
        /// The last lines it wrote to standard error (host names replaced by node names).
        stderr: String,
    },
    /// The tool ran longer than `[backup] timeout` and was killed.
    #[error("{tool} did not finish within [backup] timeout ({limit}) and was killed")]
    Timeout {
        /// pg_dump or pg_restore.
        tool: &'static str,
        /// The configured bound.
        limit: String,
    },
    /// A file or directory operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done, with the path.
        what: String,
        /// Why it failed.
        source: std::io::Error,
    },
    /// pgshift stops: the running tool was killed.
    #[error("pgshift is stopping; the backup was abandoned")]
    Stopped,
    /// The backup task ended abnormally.
    #[error("the backup task failed: {0}")]
    Task(String),
}

/// One database's outcome, as `POST /backup` answers it.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    /// The client-facing database name.
    pub database: String,
    /// True when the file was written, checked and renamed into place.
    pub ok: bool,
    /// The backup's path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// The file's size.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
    /// The node dumped (`replica0`, `primary`, `orders.replica1`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// That node's `host:port`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// Time from the start of this database's backup to its end.
    pub duration_seconds: f64,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Older backups removed by retention after this one succeeded (file names).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub pruned: Vec<String>,
}

/// A whole run's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// True when every database succeeded.
    pub ok: bool,
    /// Time the whole run took.
    pub duration_seconds: f64,
    /// Per database, in the order they ran.
    pub databases: Vec<Outcome>,
}

/// What `/metrics` shows of one database's backups.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DbStats {
    /// Unix ms of the newest successful backup (from its file name), if any.
    pub last_success_ms: Option<u64>,
    /// How long that backup took (unknown for one found on disk at start).
    pub last_duration_s: Option<f64>,
    /// Its size.
    pub last_size: Option<u64>,
    /// Failed backups since start.
    pub failures: u64,
}

/// The WAL archiver of a cluster's primary, from `pg_stat_archiver`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ArchiverStatus {
    /// WAL files archived successfully.
    pub archived: u64,
    /// Failed attempts.
    pub failed: u64,
    /// Unix seconds of the last success (0: never).
    pub last_archived_s: f64,
    /// Unix seconds of the last failure (0: never).
    pub last_failed_s: f64,
}

/// A snapshot for one scrape: owned, so the collector holds no lock.
#[derive(Debug, Clone, Default)]
pub struct MetricsView {
    /// Per database name.
    pub databases: BTreeMap<String, DbStats>,
    /// Per cluster name.
    pub archiver: BTreeMap<String, ArchiverStatus>,
}

/// Backup state that lives in [`Shared`]: the run lock and what `/metrics` reports.
#[derive(Debug, Default)]
pub struct Backups {
    /// Held for the length of a run (scheduled or requested): one at a time.
    running: Arc<tokio::sync::Mutex<()>>,
    /// Per database. A std Mutex: held only to copy or update a few numbers, never across await.
    stats: Mutex<BTreeMap<String, DbStats>>,
    /// Per cluster, the last successful read of `pg_stat_archiver`.
    archiver: Mutex<BTreeMap<String, ArchiverStatus>>,
}

/// Proof that this task is the one running a backup; dropping it lets the next one run.
#[derive(Debug)]
pub struct RunGuard(#[allow(dead_code)] OwnedMutexGuard<()>);

impl Backups {
    /// The run lock if no backup is running.
    pub fn try_begin(&self) -> Option<RunGuard> {
        self.running.clone().try_lock_owned().ok().map(RunGuard)
    }

    /// The run lock, waiting for a running backup to finish.
    pub async fn begin(&self) -> RunGuard {
        RunGuard(self.running.clone().lock_owned().await)
    }

    fn with_stats<T>(&self, f: impl FnOnce(&mut BTreeMap<String, DbStats>) -> T) -> T {
        f(&mut self.stats.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn record_success(&self, db: &str, at_ms: u64, duration_s: f64, size: u64) {
        self.with_stats(|m| {
            let s = m.entry(db.to_string()).or_default();
            s.last_success_ms = Some(at_ms);
            s.last_duration_s = Some(duration_s);
            s.last_size = Some(size);
        });
    }

    fn record_failure(&self, db: &str) {
        self.with_stats(|m| m.entry(db.to_string()).or_default().failures += 1);
    }

    /// Takes a backup found on disk as the last success, unless a newer one is known.
    fn seed(&self, db: &str, at_ms: u64, size: u64) {
        self.with_stats(|m| {
            let s = m.entry(db.to_string()).or_default();
            if s.last_success_ms.is_none_or(|t| t < at_ms) {
                s.last_success_ms = Some(at_ms);
                s.last_size = Some(size);
                s.last_duration_s = None;
            }
        });
    }

    fn set_archiver(&self, cluster: &str, status: ArchiverStatus) {
        self.archiver.lock().unwrap_or_else(|e| e.into_inner()).insert(cluster.to_string(), status);
    }

    /// The numbers for one scrape. Every database named in `config.databases` appears, one
    /// never backed up with no success time (the alert then fires for it).
    pub fn metrics(&self, config: Option<&BackupConfig>) -> MetricsView {
        let mut databases = self.with_stats(|m| m.clone());
        for name in config.map(|c| c.databases.as_slice()).unwrap_or_default() {
            databases.entry(name.clone()).or_default();
        }
        let archiver = self.archiver.lock().unwrap_or_else(|e| e.into_inner()).clone();
        MetricsView { databases, archiver }
    }
}

/// Starts the scheduler and the archiver watcher; both idle while `[backup]` is absent and
/// follow reloads.
pub fn spawn(shared: &Arc<Shared>, stop: &watch::Receiver<bool>) -> Vec<JoinHandle<()>> {
    vec![
        tokio::spawn(schedule::run(shared.clone(), stop.clone())),
        tokio::spawn(archiver::watch(shared.clone(), stop.clone())),
    ]
}
