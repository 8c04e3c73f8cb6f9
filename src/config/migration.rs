//! `[migration]`: moving to a new database through the phases (see docs/migration-runbook.md).

use serde::{Deserialize, Serialize};

use super::{BackendConfig, Dur};

/// `[migration]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct MigrationConfig {
    /// Where the current phase is persisted.
    pub state_file: String,
    /// The new database's primary.
    pub target: BackendConfig,
    /// The new database's streaming replicas (reads in shift_reads and after cutover).
    pub target_replicas: Vec<BackendConfig>,
    /// async: COMMIT is answered at once, replay follows in order; sync: COMMIT is answered once
    /// the other store has applied it too.
    pub mirror_mode: MirrorMode,
    /// Committed transactions waiting for replay before committing clients are held.
    pub mirror_queue: usize,
    /// Bound on a replay, and on how long a full queue may hold a committing client.
    pub mirror_timeout: Dur,
    /// How long a write-target flip (cutover, or rollback from it) waits for in-flight
    /// transactions and the mirror queue to finish.
    pub drain_timeout: Dur,
    /// Database compared by verification (unless the request names one).
    pub verify_database: String,
    /// Tables with at least this many rows are compared on a sample.
    pub verify_full_below: i64,
    /// The sample's share of rows, in percent.
    pub verify_sample_percent: u8,
}

impl Default for MigrationConfig {
    fn default() -> Self {
        MigrationConfig {
            state_file: "pgshift-migration.json".into(),
            target: BackendConfig { host: "127.0.0.1".into(), port: 5442 },
            target_replicas: Vec::new(),
            mirror_mode: MirrorMode::Async,
            mirror_queue: 10_000,
            mirror_timeout: Dur::secs(5),
            drain_timeout: Dur::secs(30),
            verify_database: "postgres".into(),
            verify_full_below: 1_000_000,
            verify_sample_percent: 10,
        }
    }
}

/// How dual-write waits for the other store.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum MirrorMode {
    /// COMMIT answered at once; replay follows in commit order.
    #[default]
    Async,
    /// COMMIT answered once replayed on the other store.
    Sync,
}
