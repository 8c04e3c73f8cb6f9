//! Operator actions on a migration: change phase (draining like PAUSE when the write target
//! flips), report status, run a verification.

use serde::Serialize;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::mirror::MirrorStatus;
use super::{verify, MigrationError, Phase};
use crate::shared::Shared;

/// What `GET /migration` shows.
#[derive(Debug, Serialize)]
pub struct Status {
    /// Current phase.
    pub phase: Phase,
    /// Where writes go: "source" or "target".
    pub write_target: &'static str,
    /// Where reads go.
    pub read_target: &'static str,
    /// Share of sessions reading from the target, configured (shift_reads).
    pub read_percent: u8,
    /// Share of reads actually served by the target since the phase began (shift_reads).
    pub observed_read_percent: Option<f64>,
    /// Committed writes are replayed on the other store.
    pub dual_write: bool,
    /// "to_target", "to_source" (cutover), or "none".
    pub mirror_direction: &'static str,
    /// sync or async.
    pub mirror_mode: crate::config::MirrorMode,
    /// The target's primary answers its health probe.
    pub target_connected: bool,
    /// Replay counters and queue.
    pub mirror: MirrorStatus,
    /// The migration has diverged (a replay failed or differed): verify before cutover.
    pub diverged: bool,
    /// Server connections per store: (source, target) leased + idle.
    pub pool_connections: PoolSizes,
    /// The last verification, if any.
    pub last_verify: Option<verify::Report>,
}

/// Connection counts per store.
#[derive(Debug, Serialize, Default)]
pub struct PoolSizes {
    /// Toward the source (primary and replicas).
    pub source: usize,
    /// Toward the target.
    pub target: usize,
}

/// Builds the status.
pub fn status(shared: &Shared) -> Result<Status, MigrationError> {
    let rt = shared.runtime.load_full();
    let cfg = rt.config.migration.as_ref().ok_or(MigrationError::NotConfigured)?;
    let m = &shared.migration;
    let phase = m.phase();
    let (t, s) = (m.reads_target.load(Ordering::Relaxed), m.reads_source.load(Ordering::Relaxed));
    let mut sizes = PoolSizes::default();
    for p in shared.pools.all() {
        let snap = p.snapshot();
        let n = snap.sv_active + snap.sv_idle;
        let address = p.spec.load().address.clone();
        if rt.targets.iter().any(|b| b.address == address) {
            sizes.target += n;
        } else {
            sizes.source += n;
        }
    }
    let mirror = m.mirror.status();
    Ok(Status {
        phase,
        write_target: if phase.target_serves() { "target" } else { "source" },
        read_target: match phase {
            Phase::Off | Phase::DualWrite => "source",
            Phase::ShiftReads => "source+target",
            Phase::Cutover | Phase::Done => "target",
        },
        read_percent: m.read_percent(),
        observed_read_percent: (phase == Phase::ShiftReads && t + s > 0).then(|| 100.0 * t as f64 / (t + s) as f64),
        dual_write: phase.mirrors(),
        mirror_direction: match phase {
            Phase::DualWrite | Phase::ShiftReads => "to_target",
            Phase::Cutover => "to_source",
            _ => "none",
        },
        mirror_mode: cfg.mirror_mode,
        target_connected: rt.targets.first().is_some_and(|b| b.health.up.load(Ordering::Relaxed)),
        diverged: mirror.diverged > 0,
        mirror,
        pool_connections: sizes,
        last_verify: m.last_verify.lock().ok().and_then(|l| l.clone()),
    })
}

/// Changes phase. When the write target flips (into or out of cutover/done) it drains first,
/// like PAUSE: new transactions wait, running ones finish, the mirror queue empties; then the
/// flip, then everything resumes. No transaction spans two phases.
pub async fn change_phase(shared: &Shared, to: Phase, read_percent: Option<u8>) -> Result<Status, MigrationError> {
    let drain = {
        let rt = shared.runtime.load();
        rt.config.migration.as_ref().ok_or(MigrationError::NotConfigured)?.drain_timeout.0
    };
    let m = &shared.migration;
    let _one_at_a_time = m.changing.lock().await;
    m.check(to, read_percent)?;
    let from = m.phase();
    let flips_writes = from.target_serves() != to.target_serves() || (from.mirrors() && !to.mirrors());
    if !flips_writes {
        m.set(to, read_percent)?;
        return status(shared);
    }
    let was_paused = *shared.paused.borrow();
    shared.paused.send_replace(true);
    let drained = wait_idle(shared, drain).await && m.mirror.drained(drain).await;
    let result = if drained { m.set(to, read_percent) } else { Err(MigrationError::DrainTimeout(drain.as_secs())) };
    shared.paused.send_replace(was_paused);
    result?;
    status(shared)
}

/// Waits until no server connection is leased (every transaction in flight has finished).
async fn wait_idle(shared: &Shared, timeout: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let busy: usize = shared.pools.all().iter().map(|p| p.snapshot().sv_active).sum();
        if busy == 0 {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Runs a verification of `database` (or the configured one) and keeps the report.
pub async fn verify_now(shared: &Shared, database: Option<&str>) -> Result<verify::Report, MigrationError> {
    let rt = shared.runtime.load_full();
    let cfg = rt.config.migration.as_ref().ok_or(MigrationError::NotConfigured)?;
    let db = database.unwrap_or(&cfg.verify_database).to_string();
    let report = verify::run(&rt, &db, cfg.verify_full_below, cfg.verify_sample_percent).await;
    if let Ok(mut l) = shared.migration.last_verify.lock() {
        *l = Some(report.clone());
    }
    Ok(report)
}
