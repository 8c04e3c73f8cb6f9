//! Operator actions on a migration: change phase (draining like PAUSE when the write target
//! flips), report status, run a verification.

use serde::Serialize;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::logical::{self, Direction, SyncMode};
use super::mirror::MirrorStatus;
use super::{verify, MigrationError, Phase};
use crate::config::{MigrationConfig, SyncChoice};
use crate::fleet::change::Change;
use crate::shared::{Runtime, Shared};

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
    /// The same, per database.
    pub pool_connections_by_database: std::collections::BTreeMap<String, PoolSizes>,
    /// Each database's phase: its own, or the migration's (`own_phase` false).
    pub databases: Vec<DatabasePhase>,
    /// The last verification, if any.
    pub last_verify: Option<verify::Report>,
    /// The last verification of each database (scheduled or asked for).
    pub verifications: Vec<verify::Report>,
    /// `verify_interval` in seconds (0: verification runs only when asked).
    pub verify_interval_seconds: u64,
    /// The read-shift autopilot.
    pub ramp: super::ramp::RampStatus,
    /// The engine keeping the target in step: "logical" or "statement".
    pub sync: SyncMode,
    /// Logical sync, per database.
    pub logical: Vec<LogicalStatus>,
}

fn read_target(phase: Phase) -> &'static str {
    match phase {
        Phase::Off | Phase::DualWrite => "source",
        Phase::ShiftReads => "source+target",
        Phase::Cutover | Phase::Done => "target",
    }
}

/// Where one database stands.
#[derive(Debug, Serialize)]
pub struct DatabasePhase {
    /// The database.
    pub database: String,
    /// Its phase.
    pub phase: Phase,
    /// True when set for this database alone; false when it follows the migration's phase.
    pub own_phase: bool,
    /// Its share of sessions reading from the target (shift_reads).
    pub read_percent: u8,
    /// Where its writes go.
    pub write_target: &'static str,
    /// Where its reads go.
    pub read_target: &'static str,
    /// Share of its reads the target served since its phase last changed (shift_reads).
    pub observed_read_percent: Option<f64>,
    /// The engine keeping its copy in step.
    pub sync: SyncMode,
    /// Logical sync: bytes of the serving server's WAL the other one has not applied.
    pub lag_bytes: Option<u64>,
    /// Its server connections per store.
    pub pool_connections: PoolSizes,
}

fn database_phases(
    m: &super::Migration,
    pools: &std::collections::BTreeMap<String, PoolSizes>,
    known: impl Iterator<Item = String>,
) -> Vec<DatabasePhase> {
    let own = m.own_phases();
    let mut names: std::collections::BTreeSet<String> = known.collect();
    names.extend(pools.keys().cloned());
    names.extend(own.keys().cloned());
    names
        .into_iter()
        .map(|d| {
            let phase = m.phase_of(&d);
            DatabasePhase {
                own_phase: own.contains_key(&d),
                read_percent: m.read_percent_of(&d),
                write_target: if phase.target_serves() { "target" } else { "source" },
                read_target: read_target(phase),
                observed_read_percent: (phase == Phase::ShiftReads).then(|| m.observed_read_percent_of(&d)).flatten(),
                sync: m.sync_mode(),
                lag_bytes: m.logical.get(&d).and_then(|s| s.lag_bytes()),
                pool_connections: pools.get(&d).cloned().unwrap_or_default(),
                phase,
                database: d,
            }
        })
        .collect()
}

/// One database of logical sync, as the monitor last saw it.
#[derive(Debug, Serialize)]
pub struct LogicalStatus {
    /// The database.
    pub database: String,
    /// "to_target", "to_source", or "none".
    pub direction: &'static str,
    /// Tables in the subscription.
    pub tables: u32,
    /// Tables whose initial copy is complete.
    pub tables_copied: u32,
    /// Bytes of the serving server's WAL the other one has not applied (null: not sampled).
    pub lag_bytes: Option<u64>,
    /// The last sampling error, if the last sample failed.
    pub error: Option<String>,
}

fn logical_status(m: &super::Migration) -> Vec<LogicalStatus> {
    m.logical
        .all()
        .iter()
        .map(|d| LogicalStatus {
            database: d.database.clone(),
            direction: match d.direction() {
                Some(Direction::Forward) => "to_target",
                Some(Direction::Reverse) => "to_source",
                None => "none",
            },
            tables: d.tables_total.load(Ordering::Relaxed),
            tables_copied: d.tables_ready.load(Ordering::Relaxed),
            lag_bytes: d.lag_bytes(),
            error: d.last_error.lock().ok().and_then(|e| e.clone()),
        })
        .collect()
}

/// Connection counts per store.
#[derive(Debug, Serialize, Default, Clone)]
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
    // Together: a ramp step moves the share under the ramp's lock.
    let (ramp, read_percent) = m.ramp.status_with(|| m.read_percent());
    let (t, s) = (m.reads_target.load(Ordering::Relaxed), m.reads_source.load(Ordering::Relaxed));
    let mut sizes = PoolSizes::default();
    let mut per_db: std::collections::BTreeMap<String, PoolSizes> = Default::default();
    for p in shared.pools.all() {
        let snap = p.snapshot();
        let n = snap.sv_active + snap.sv_idle;
        let spec = p.spec.load();
        let db = per_db.entry(spec.database.clone()).or_default();
        if rt.targets.iter().any(|b| b.address == spec.address) {
            sizes.target += n;
            db.target += n;
        } else {
            sizes.source += n;
            db.source += n;
        }
    }
    let mirror = m.mirror.status();
    Ok(Status {
        phase,
        write_target: if phase.target_serves() { "target" } else { "source" },
        read_target: read_target(phase),
        read_percent,
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
        databases: database_phases(m, &per_db, logical::databases(&rt, cfg).into_iter()),
        pool_connections_by_database: per_db,
        last_verify: m.last_verify.lock().ok().and_then(|l| l.clone()),
        verifications: m.verify_reports.lock().map(|r| r.values().cloned().collect()).unwrap_or_default(),
        verify_interval_seconds: cfg.verify_interval.0.as_secs(),
        ramp,
        sync: m.sync_mode(),
        logical: logical_status(m),
    })
}

/// Changes phase. When the write target flips (into or out of cutover/done) it drains first,
/// like PAUSE: new transactions wait, running ones finish, the mirror queue empties; then the
/// flip, then everything resumes. No transaction spans two phases.
pub async fn change_phase(shared: &Shared, to: Phase, read_percent: Option<u8>) -> Result<Status, MigrationError> {
    change_phase_of(shared, None, to, read_percent).await
}

/// Changes the phase of one database (it then has a phase of its own), or with `database` None
/// the migration's phase, which every database without its own follows.
pub async fn change_phase_of(
    shared: &Shared,
    database: Option<&str>,
    to: Phase,
    read_percent: Option<u8>,
) -> Result<Status, MigrationError> {
    let rt = shared.runtime.load_full();
    let cfg = rt.config.migration.as_ref().ok_or(MigrationError::NotConfigured)?;
    let m = &shared.migration;
    let _one_at_a_time = m.changing.lock().await;
    let mut fleet = crate::fleet::change::begin(shared).await?;
    let result = change_locked(shared, &rt, cfg, (database, to, read_percent), &mut fleet).await;
    if let Some(c) = fleet.as_mut() {
        match &result {
            Ok(()) if !c.published() => c.publish(shared).await?,
            Ok(()) => {}
            Err(_) => c.abort().await,
        }
    }
    result?;
    status(shared)
}

/// The change itself, with `changing` held and the fleet's change lock taken (if in a fleet).
async fn change_locked(
    shared: &Shared,
    rt: &Runtime,
    cfg: &MigrationConfig,
    (database, to, read_percent): (Option<&str>, Phase, Option<u8>),
    fleet: &mut Option<Change>,
) -> Result<(), MigrationError> {
    let m = &shared.migration;
    m.check(database, to, read_percent)?;
    m.ramp.stop();
    let from = database.map_or_else(|| m.phase(), |d| m.phase_of(d));
    if from == Phase::Off && to == Phase::DualWrite && m.phase() == Phase::Off && m.own_phases().is_empty() {
        m.set_sync_mode(choose_sync(rt, cfg).await?);
    }
    if m.sync_mode() == SyncMode::Logical {
        let dbs = match database {
            Some(d) if logical::databases(rt, cfg).iter().any(|x| x == d) => vec![d.to_string()],
            Some(d) => {
                return Err(MigrationError::NotReady(format!("database {d:?} is not one of [migration] databases")))
            }
            None => {
                let own = m.own_phases();
                logical::databases(rt, cfg).into_iter().filter(|d| !own.contains_key(d)).collect()
            }
        };
        return logical_change(shared, rt, cfg, (database, &dbs), (from, to, read_percent), fleet).await;
    }
    // Into or out of mirroring too: a transaction (or a session-pinned client) attached before
    // the change keeps the phase it attached in, and would write unmirrored after it.
    let flips_writes = from.target_serves() != to.target_serves() || from.mirrors() != to.mirrors();
    if !flips_writes {
        return m.set_of(database, to, read_percent);
    }
    fenced(shared, cfg.drain_timeout.0, fleet, async {
        if m.mirror.drained(cfg.drain_timeout.0).await {
            m.set_of(database, to, read_percent)
        } else {
            Err(MigrationError::DrainTimeout(cfg.drain_timeout.0.as_secs()))
        }
    })
    .await
}

/// Starts the read-shift autopilot: into `shift_reads` at `ramp_start_percent` (from
/// `dual_write`, or restarting it in `shift_reads`), then the ramp raises the share on its own.
pub async fn start_ramp(shared: &Shared) -> Result<Status, MigrationError> {
    let start = {
        let rt = shared.runtime.load();
        rt.config.migration.as_ref().ok_or(MigrationError::NotConfigured)?.ramp_start_percent
    };
    let from = shared.migration.phase();
    if !matches!(from, Phase::DualWrite | Phase::ShiftReads) {
        return Err(MigrationError::NotReady(format!(
            "the read-shift ramp starts from dual_write or shift_reads, not {}",
            from.name()
        )));
    }
    change_phase(shared, Phase::ShiftReads, Some(start)).await?;
    shared.migration.ramp.start();
    tracing::info!(read_percent = start, "read-shift ramp started");
    status(shared)
}

/// The engine for a migration entering dual_write: `sync` as configured; `auto` takes logical
/// replication when an admin user is configured and the source has `wal_level = logical`.
async fn choose_sync(rt: &Runtime, cfg: &MigrationConfig) -> Result<SyncMode, MigrationError> {
    match cfg.sync {
        SyncChoice::Statement => return Ok(SyncMode::Statement),
        SyncChoice::Logical => return Ok(SyncMode::Logical),
        SyncChoice::Auto if cfg.admin_user.is_empty() => return Ok(SyncMode::Statement),
        SyncChoice::Auto => {}
    }
    let databases = logical::databases(rt, cfg);
    let Some(first) = databases.first() else { return Ok(SyncMode::Statement) };
    let mut conn = logical::connect(rt, logical::Store::Source, first).await?;
    let level = conn
        .query_row("SELECT current_setting('wal_level')")
        .await
        .map_err(|e| MigrationError::NotReady(format!("cannot read the source's wal_level: {e}")))?;
    let logical = level.first().cloned().flatten().as_deref() == Some("logical");
    tracing::info!(sync = if logical { "logical" } else { "statement" }, "migration sync engine chosen");
    Ok(if logical { SyncMode::Logical } else { SyncMode::Statement })
}

/// A phase change with logical sync: what each step does to the publications and subscriptions.
async fn logical_change(
    shared: &Shared,
    rt: &Runtime,
    cfg: &MigrationConfig,
    (database, dbs): (Option<&str>, &[String]),
    (from, to, read_percent): (Phase, Phase, Option<u8>),
    fleet: &mut Option<Change>,
) -> Result<(), MigrationError> {
    let m = &shared.migration;
    let (drain, catchup) = (cfg.drain_timeout.0, cfg.catchup_timeout.0);
    match (from, to) {
        (Phase::Off, Phase::DualWrite) => logical::flip::start(rt, &m.logical, dbs).await?,
        (Phase::DualWrite, Phase::ShiftReads) => logical::flip::copy_complete(rt, dbs).await?,
        (Phase::DualWrite | Phase::ShiftReads, Phase::Cutover) => {
            logical::flip::copy_complete(rt, dbs).await?;
            let flip = logical::flip::flip(rt, &m.logical, dbs, Direction::Forward, catchup);
            return fenced(shared, drain, fleet, async {
                flip.await.and_then(|()| m.set_of(database, to, read_percent))
            })
            .await;
        }
        (Phase::Cutover, Phase::DualWrite | Phase::ShiftReads) => {
            let flip = logical::flip::flip(rt, &m.logical, dbs, Direction::Reverse, catchup);
            return fenced(shared, drain, fleet, async {
                flip.await.and_then(|()| m.set_of(database, to, read_percent))
            })
            .await;
        }
        (Phase::Cutover, Phase::Off) => {
            let flip = logical::flip::flip(rt, &m.logical, dbs, Direction::Reverse, catchup);
            let back = async {
                flip.await?;
                logical::flip::teardown(rt, &m.logical, dbs).await?;
                m.set_of(database, to, read_percent)
            };
            return fenced(shared, drain, fleet, back).await;
        }
        (Phase::Cutover, Phase::Done) => logical::flip::finish(rt, &m.logical, dbs, catchup).await?,
        (Phase::DualWrite | Phase::ShiftReads, Phase::Off) => logical::flip::teardown(rt, &m.logical, dbs).await?,
        _ => {}
    }
    m.set_of(database, to, read_percent)
}

/// Runs `work` with new transactions held and none running (like PAUSE), then releases. In a
/// fleet, every other live instance holds and confirms too, and the new state is published
/// before anyone resumes.
async fn fenced<F>(shared: &Shared, drain: Duration, fleet: &mut Option<Change>, work: F) -> Result<(), MigrationError>
where
    F: std::future::Future<Output = Result<(), MigrationError>>,
{
    let was_paused = *shared.paused.borrow();
    shared.paused.send_replace(true);
    let (local, others) = tokio::join!(wait_idle(shared, drain), async {
        match fleet.as_mut() {
            Some(c) => c.fence(drain).await,
            None => Ok(()),
        }
    });
    let mut result = match (local, others) {
        (false, _) => Err(MigrationError::DrainTimeout(drain.as_secs())),
        (true, Err(e)) => Err(e.into()),
        (true, Ok(())) => work.await,
    };
    if let (Ok(()), Some(c)) = (&result, fleet.as_mut()) {
        result = c.publish(shared).await.map_err(Into::into);
    }
    shared.paused.send_replace(was_paused);
    result
}

/// Waits until no server connection is leased (every transaction in flight has finished).
pub(crate) async fn wait_idle(shared: &Shared, timeout: Duration) -> bool {
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
    let sequences = shared.migration.sync_mode() == SyncMode::Statement;
    let report = verify::run(&rt, &db, cfg.verify_full_below, cfg.verify_sample_percent, sequences).await;
    shared.migration.record_verify(&report);
    Ok(report)
}
