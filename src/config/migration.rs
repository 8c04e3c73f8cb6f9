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
    /// Verify every this often while the other server follows (dual_write, shift_reads,
    /// cutover); 0: only when asked.
    pub verify_interval: Dur,
    /// Read-shift autopilot: the share it starts at, in percent.
    pub ramp_start_percent: u8,
    /// ...the step it raises the share by...
    pub ramp_step_percent: u8,
    /// ...every this long while the target's reads stay healthy...
    pub ramp_interval: Dur,
    /// ...failing less than this share of reads (0.01 = 1%)...
    pub ramp_max_error_ratio: f64,
    /// ...with a p95 latency at most this many times the source's.
    pub ramp_max_latency_factor: f64,
    /// How the target is kept in step: PostgreSQL's logical replication, or statement replay.
    pub sync: SyncChoice,
    /// The role (one of `[[auth.users]]`, with a plaintext password) that creates publications
    /// and subscriptions on both servers in logical sync; empty: none (statement replay).
    pub admin_user: String,
    /// Databases logical sync moves (a publication and a subscription in each); empty: the
    /// `[databases]` entries of the default cluster.
    pub databases: Vec<String>,
    /// How long a write-target flip waits for the other server to apply everything the serving
    /// one committed, before it gives up and stays where it was.
    pub catchup_timeout: Dur,
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
            verify_interval: Dur::secs(0),
            ramp_start_percent: 10,
            ramp_step_percent: 10,
            ramp_interval: Dur::secs(300),
            ramp_max_error_ratio: 0.01,
            ramp_max_latency_factor: 2.0,
            sync: SyncChoice::Auto,
            admin_user: String::new(),
            databases: Vec::new(),
            catchup_timeout: Dur::secs(10),
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

/// `[migration] sync`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum SyncChoice {
    /// Logical replication when the source has `wal_level = logical` and `admin_user` is set,
    /// statement replay otherwise.
    #[default]
    Auto,
    /// PostgreSQL's logical replication (publication on the source, subscription on the target).
    Logical,
    /// pgshift replays each committed write transaction on the other server.
    Statement,
}
