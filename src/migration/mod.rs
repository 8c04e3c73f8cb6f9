//! The migration-phase switch: which store serves reads and writes (source, target or both),
//! persisted so a restart resumes the same phase, changed only at transaction boundaries.
//!
//! Phases: `off` (source only) -> `dual_write` (source serves; committed writes are mirrored to
//! the target in commit order) -> `shift_reads` (a sticky share of client sessions reads from the
//! target) -> `cutover` (the target serves; writes are mirrored back to the source so rollback
//! stays possible) -> `done` (target only). Any phase may go back to any earlier one.
//!
//! The target is kept in step by one of two engines, chosen on entering dual_write: PostgreSQL's
//! logical replication (`logical`), or pgshift's replay of committed statements (`statement`).

pub mod control;
pub mod logical;
pub mod mirror;
pub mod ramp;
pub mod schedule;
pub mod verify;

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, RwLock};

/// A migration phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Everything to the source.
    Off = 0,
    /// Source serves; writes are mirrored to the target.
    DualWrite = 1,
    /// As dual_write, and `read_percent` of sessions read from the target.
    ShiftReads = 2,
    /// Target serves; writes are mirrored back to the source.
    Cutover = 3,
    /// Target only.
    Done = 4,
}

impl Phase {
    fn from_u8(v: u8) -> Phase {
        match v {
            1 => Phase::DualWrite,
            2 => Phase::ShiftReads,
            3 => Phase::Cutover,
            4 => Phase::Done,
            _ => Phase::Off,
        }
    }

    /// True when the target is the primary (reads and writes go there).
    pub fn target_serves(self) -> bool {
        matches!(self, Phase::Cutover | Phase::Done)
    }

    /// True when committed writes are mirrored to the other store.
    pub fn mirrors(self) -> bool {
        matches!(self, Phase::DualWrite | Phase::ShiftReads | Phase::Cutover)
    }

    /// Name as in the API.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Off => "off",
            Phase::DualWrite => "dual_write",
            Phase::ShiftReads => "shift_reads",
            Phase::Cutover => "cutover",
            Phase::Done => "done",
        }
    }
}

/// Why a phase change was refused.
#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    /// No `[migration]` in the configuration.
    #[error("no migration is configured ([migration] is absent)")]
    NotConfigured,
    /// `read_percent` outside 0..=100.
    #[error("read_percent must be between 0 and 100")]
    BadPercent,
    /// Forward jumps must go through dual_write first (the target must have caught up).
    #[error(
        "cannot go from {from} to {to}: move forward one phase at a time (rollback to any earlier phase is allowed)"
    )]
    BadTransition {
        /// Current phase.
        from: &'static str,
        /// Requested phase.
        to: &'static str,
    },
    /// The state file could not be written.
    #[error("cannot persist the migration state: {0}")]
    Persist(String),
    /// The drain before a flip of the write target did not finish.
    #[error("in-flight transactions did not finish within {0}s; phase unchanged")]
    DrainTimeout(u64),
    /// Logical sync cannot start: every reason, one per entry.
    #[error("logical sync cannot start: {}", .0.join("; "))]
    Refused(Vec<String>),
    /// The change needs something that is not there yet.
    #[error("{0}")]
    NotReady(String),
    /// The fence gave up waiting for the other server to apply everything.
    #[error(
        "the {other} did not apply everything the {serving} committed within {secs}s ({behind} bytes behind in database {database}); the phase is unchanged and writes stay on the {serving}"
    )]
    CatchupTimeout {
        /// Which database lagged.
        database: String,
        /// Bytes of WAL not applied yet.
        behind: u64,
        /// The bound waited.
        secs: f64,
        /// The server that serves writes.
        serving: &'static str,
        /// The one that lagged.
        other: &'static str,
    },
    /// A server refused a logical-sync statement, or could not be reached.
    #[error(transparent)]
    Logical(#[from] logical::LogicalError),
    /// The fleet's control table refused the change, or could not be reached.
    #[error(transparent)]
    Fleet(#[from] crate::fleet::FleetError),
}

/// A database's own phase, when it has one (otherwise it follows the migration's phase).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Own {
    /// Its phase.
    pub phase: Phase,
    /// Its share of sessions reading from the target in shift_reads.
    pub read_percent: u8,
}

/// What the state file holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Persisted {
    /// The phase.
    pub phase: Phase,
    /// Share of sessions reading from the target in shift_reads.
    pub read_percent: u8,
    /// The engine chosen on entering dual_write.
    #[serde(default)]
    pub sync: logical::SyncMode,
    /// Databases with a phase of their own.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub databases: BTreeMap<String, Own>,
}

/// The live switch, shared by every session.
pub struct Migration {
    phase: AtomicU8,
    read_percent: AtomicU8,
    state_file: Option<PathBuf>,
    /// Serialises phase changes (and their drains).
    pub(crate) changing: tokio::sync::Mutex<()>,
    /// The committed-write mirror.
    pub mirror: mirror::Mirror,
    /// Reads served by the target / by the source while shift_reads was on (observed split).
    pub reads_target: AtomicU64,
    /// See `reads_target`.
    pub reads_source: AtomicU64,
    /// Last verification report, for the status endpoint and metrics.
    pub last_verify: Mutex<Option<verify::Report>>,
    /// The last verification of each database.
    pub verify_reports: Mutex<std::collections::BTreeMap<String, verify::Report>>,
    /// The engine in use (a `logical::SyncMode` as u8).
    sync: AtomicU8,
    /// Logical sync's databases and their progress.
    pub logical: logical::Logical,
    /// The read-shift autopilot and the per-store read figures it judges by.
    pub ramp: ramp::Ramp,
    /// Databases with a phase of their own (`has_own` keeps the common case to one load).
    own: RwLock<BTreeMap<String, Own>>,
    has_own: AtomicBool,
    /// Reads in shift_reads per database: (served by the target, by the source).
    db_reads: RwLock<BTreeMap<String, Arc<(AtomicU64, AtomicU64)>>>,
    /// Changes made here, counted (see `local_changes`).
    local_changes: AtomicU64,
}

impl Migration {
    /// The switch, resumed from `state_file` when it exists.
    pub fn new(state_file: Option<PathBuf>) -> Migration {
        let saved = state_file
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .and_then(|t| serde_json::from_str::<Persisted>(&t).ok());
        let saved = saved.unwrap_or(Persisted {
            phase: Phase::Off,
            read_percent: 0,
            sync: Default::default(),
            databases: BTreeMap::new(),
        });
        if saved.phase != Phase::Off {
            tracing::info!(
                phase = saved.phase.name(),
                read_percent = saved.read_percent,
                "migration phase resumed from the state file"
            );
        }
        Migration {
            phase: AtomicU8::new(saved.phase as u8),
            read_percent: AtomicU8::new(saved.read_percent.min(100)),
            state_file,
            changing: tokio::sync::Mutex::new(()),
            mirror: mirror::Mirror::default(),
            reads_target: AtomicU64::new(0),
            reads_source: AtomicU64::new(0),
            last_verify: Mutex::new(None),
            verify_reports: Mutex::new(Default::default()),
            sync: AtomicU8::new(saved.sync as u8),
            logical: logical::Logical::default(),
            ramp: ramp::Ramp::default(),
            has_own: AtomicBool::new(!saved.databases.is_empty()),
            own: RwLock::new(saved.databases),
            db_reads: RwLock::new(BTreeMap::new()),
            local_changes: AtomicU64::new(0),
        }
    }

    /// The phase of `database`: its own, or the migration's.
    pub fn phase_of(&self, database: &str) -> Phase {
        self.own_of(database).map_or_else(|| self.phase(), |o| o.phase)
    }

    /// The read share of `database`: its own, or the migration's.
    pub fn read_percent_of(&self, database: &str) -> u8 {
        self.own_of(database).map_or_else(|| self.read_percent(), |o| o.read_percent)
    }

    fn own_of(&self, database: &str) -> Option<Own> {
        if !self.has_own.load(Ordering::Acquire) {
            return None;
        }
        self.own.read().ok()?.get(database).copied()
    }

    /// Counts reads served in shift_reads, overall and for `database`.
    pub fn count_reads(&self, database: &str, on_target: bool, n: u64) {
        let all = if on_target { &self.reads_target } else { &self.reads_source };
        all.fetch_add(n, Ordering::Relaxed);
        let known = self.db_reads.read().ok().and_then(|m| m.get(database).cloned());
        let cell = match known {
            Some(c) => c,
            None => match self.db_reads.write() {
                Ok(mut m) => m.entry(database.to_string()).or_default().clone(),
                Err(_) => return,
            },
        };
        let counter = if on_target { &cell.0 } else { &cell.1 };
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// The share of `database`'s reads the target served since its phase last changed.
    pub fn observed_read_percent_of(&self, database: &str) -> Option<f64> {
        let cell = self.db_reads.read().ok()?.get(database).cloned()?;
        let (t, s) = (cell.0.load(Ordering::Relaxed), cell.1.load(Ordering::Relaxed));
        (t + s > 0).then(|| 100.0 * t as f64 / (t + s) as f64)
    }

    /// Databases with a phase of their own.
    pub fn own_phases(&self) -> BTreeMap<String, Own> {
        self.own.read().map(|o| o.clone()).unwrap_or_default()
    }

    /// Keeps a verification report (the latest overall, and per database).
    pub fn record_verify(&self, report: &verify::Report) {
        if let Ok(mut l) = self.last_verify.lock() {
            *l = Some(report.clone());
        }
        if let Ok(mut m) = self.verify_reports.lock() {
            m.insert(report.database.clone(), report.clone());
        }
    }

    /// The engine keeping the target in step.
    pub fn sync_mode(&self) -> logical::SyncMode {
        match self.sync.load(Ordering::Acquire) {
            1 => logical::SyncMode::Logical,
            _ => logical::SyncMode::Statement,
        }
    }

    /// Chooses the engine (on entering dual_write); persisted with the next `set`.
    pub fn set_sync_mode(&self, mode: logical::SyncMode) {
        self.sync.store(mode as u8, Ordering::Release);
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        Phase::from_u8(self.phase.load(Ordering::Acquire))
    }

    /// The configured share of sessions reading from the target (shift_reads).
    pub fn read_percent(&self) -> u8 {
        self.read_percent.load(Ordering::Relaxed)
    }

    /// Checks a requested change of the migration's phase (`database` None) or of one
    /// database's; the caller drains first when the write target flips.
    pub fn check(&self, database: Option<&str>, to: Phase, read_percent: Option<u8>) -> Result<(), MigrationError> {
        if read_percent.is_some_and(|p| p > 100) {
            return Err(MigrationError::BadPercent);
        }
        let from = database.map_or_else(|| self.phase(), |d| self.phase_of(d));
        // Forward: one step at a time (the mirror must be running before reads or writes move);
        // staying, or going back to any earlier phase, is always allowed.
        if to > from && to as u8 > from as u8 + 1 {
            return Err(MigrationError::BadTransition { from: from.name(), to: to.name() });
        }
        Ok(())
    }

    /// Sets and persists the migration's phase (the caller has drained if needed).
    pub fn set(&self, to: Phase, read_percent: Option<u8>) -> Result<(), MigrationError> {
        self.set_of(None, to, read_percent)
    }

    /// Sets and persists the phase of the migration (`database` None) or of one database.
    pub fn set_of(&self, database: Option<&str>, to: Phase, read_percent: Option<u8>) -> Result<(), MigrationError> {
        let current = database.map_or_else(|| self.read_percent(), |d| self.read_percent_of(d));
        let pct = read_percent.unwrap_or(if to == Phase::ShiftReads { current } else { 0 });
        let mut saved = self.snapshot();
        match database {
            Some(d) => {
                saved.databases.insert(d.to_string(), Own { phase: to, read_percent: pct });
            }
            None => (saved.phase, saved.read_percent) = (to, pct),
        }
        self.install(&saved)?;
        match database {
            Some(d) => self.reset_reads(Some(d)),
            None => self.reset_reads(None),
        }
        self.local_changes.fetch_add(1, Ordering::AcqRel);
        let database = database.unwrap_or("(every database without its own phase)");
        tracing::info!(phase = to.name(), read_percent = pct, database, "migration phase changed");
        Ok(())
    }

    /// The whole switch as the state file (and the fleet's control table) holds it.
    pub fn snapshot(&self) -> Persisted {
        Persisted {
            phase: self.phase(),
            read_percent: self.read_percent(),
            sync: self.sync_mode(),
            databases: self.own_phases(),
        }
    }

    /// Changes made here (not taken from the fleet) so far: the fleet publishes when this moves.
    pub fn local_changes(&self) -> u64 {
        self.local_changes.load(Ordering::Acquire)
    }

    /// Takes the fleet's shared state, as another instance set it; true if anything changed.
    pub fn apply_shared(&self, saved: &Persisted) -> Result<bool, MigrationError> {
        let before = self.snapshot();
        if &before == saved {
            return Ok(false);
        }
        self.set_sync_mode(saved.sync);
        self.install(saved)?;
        if before.phase != saved.phase || before.read_percent != saved.read_percent {
            self.reset_reads(None);
        }
        tracing::info!(
            phase = saved.phase.name(),
            read_percent = saved.read_percent,
            databases = saved.databases.len(),
            "migration phase taken from the fleet"
        );
        Ok(true)
    }

    /// Persists `saved`, then makes it the live switch.
    fn install(&self, saved: &Persisted) -> Result<(), MigrationError> {
        if let Some(path) = &self.state_file {
            let text = serde_json::to_string_pretty(saved).map_err(|e| MigrationError::Persist(e.to_string()))?;
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, text)
                .and_then(|_| std::fs::rename(&tmp, path))
                .map_err(|e| MigrationError::Persist(e.to_string()))?;
        }
        if let Ok(mut o) = self.own.write() {
            *o = saved.databases.clone();
            self.has_own.store(!o.is_empty(), Ordering::Release);
        }
        self.read_percent.store(saved.read_percent.min(100), Ordering::Relaxed);
        self.phase.store(saved.phase as u8, Ordering::Release);
        Ok(())
    }

    /// Starts the observed read split afresh (for one database, or all).
    fn reset_reads(&self, database: Option<&str>) {
        self.reads_target.store(0, Ordering::Relaxed);
        self.reads_source.store(0, Ordering::Relaxed);
        if let Ok(mut m) = self.db_reads.write() {
            match database {
                Some(d) => drop(m.remove(d)),
                None => m.clear(),
            }
        }
    }

    /// Whether a session (by its id) reads from the target in shift_reads: sticky per session,
    /// spread evenly by a hash so the observed share follows `read_percent`.
    pub fn session_reads_target(&self, database: &str, session_id: u64) -> bool {
        match self.phase_of(database) {
            Phase::ShiftReads => {
                let h = session_id.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32;
                (h % 100) < u64::from(self.read_percent_of(database))
            }
            p => p.target_serves(),
        }
    }
}

/// A connection of pgshift's own (verification, logical sync) to `backend` as `user`.
pub(crate) async fn own_connection(
    rt: &crate::shared::Runtime,
    backend: &crate::pool::Backend,
    user: std::sync::Arc<crate::auth::UserEntry>,
    database: &str,
) -> Result<crate::server::ServerConn, String> {
    let spec = crate::server::LoginSpec {
        address: backend.address.clone(),
        backend_name: backend.name.clone(),
        user,
        database: database.to_string(),
        connect_timeout: rt.config.proxy.server_connect_timeout.0,
        tls: rt.server_tls.clone(),
    };
    crate::server::ServerConn::connect(&spec, 0, 0).await.map_err(|e| format!("{}: {e}", backend.name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transitions_and_persistence() {
        let dir = std::env::temp_dir().join(format!("pgshift-mig-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("state.json");
        let _ = std::fs::remove_file(&file);
        let m = Migration::new(Some(file.clone()));
        assert_eq!(m.phase(), Phase::Off);
        assert!(m.check(None, Phase::Cutover, None).is_err(), "no jumping ahead");
        m.check(None, Phase::DualWrite, None).unwrap();
        m.set(Phase::DualWrite, None).unwrap();
        m.set(Phase::ShiftReads, Some(50)).unwrap();
        assert!(m.check(None, Phase::ShiftReads, Some(101)).is_err());
        m.check(None, Phase::Off, None).unwrap(); // rollback to any earlier phase
        m.set_of(Some("billing"), Phase::DualWrite, None).unwrap(); // a database of its own
        assert_eq!((m.phase_of("billing"), m.phase_of("app")), (Phase::DualWrite, Phase::ShiftReads));
        let resumed = Migration::new(Some(file.clone()));
        assert_eq!((resumed.phase(), resumed.read_percent()), (Phase::ShiftReads, 50));
        assert_eq!(resumed.phase_of("billing"), Phase::DualWrite, "own phases are persisted too");
        let share = (0..10_000u64).filter(|&id| resumed.session_reads_target("app", id)).count();
        assert!((4_500..5_500).contains(&share), "{share}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
