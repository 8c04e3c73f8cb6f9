//! Verification on a schedule: while the other server follows (dual_write, shift_reads,
//! cutover), every `verify_interval` each moved database is compared and the reports kept for
//! `GET /migration` and `/metrics` (last run, rows checked, differences).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::{logical, verify, Phase};
use crate::shared::Shared;

/// How often the schedule looks at the configuration when verification is off.
const IDLE_CHECK: Duration = Duration::from_secs(5);

/// Runs until `stop`.
pub async fn run(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    loop {
        let wait = match due(&shared) {
            Some(interval) => interval,
            None => IDLE_CHECK,
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        if due(&shared).is_some() {
            verify_all(&shared).await;
        }
    }
}

/// The interval, when scheduled verification is on and the phase has a follower to compare.
fn due(shared: &Shared) -> Option<Duration> {
    let rt = shared.runtime.load();
    let interval = rt.config.migration.as_ref()?.verify_interval.0;
    let follows = |p: Phase| matches!(p, Phase::DualWrite | Phase::ShiftReads | Phase::Cutover);
    let m = &shared.migration;
    let following = follows(m.phase()) || m.own_phases().values().any(|o| follows(o.phase));
    (!interval.is_zero() && following).then_some(interval)
}

/// Each moved database (logical sync's list, else `verify_database`), one after another.
async fn verify_all(shared: &Shared) {
    let rt = shared.runtime.load_full();
    let Some(cfg) = rt.config.migration.as_ref() else { return };
    let mut databases = logical::databases(&rt, cfg);
    if databases.is_empty() {
        databases.push(cfg.verify_database.clone());
    }
    for db in databases {
        let sequences = shared.migration.sync_mode() == logical::SyncMode::Statement;
        let report = verify::run(&rt, &db, cfg.verify_full_below, cfg.verify_sample_percent, sequences).await;
        match &report.error {
            Some(e) => tracing::warn!(database = %db, error = %e, "scheduled verification could not compare"),
            None if report.differences > 0 => tracing::warn!(
                database = %db, differences = report.differences, rows_checked = report.rows_checked,
                "scheduled verification found differences"
            ),
            None => {
                tracing::info!(database = %db, rows_checked = report.rows_checked, "scheduled verification: no difference")
            }
        }
        shared.migration.record_verify(&report);
    }
}
