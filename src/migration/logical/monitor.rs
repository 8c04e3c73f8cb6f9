//! Samples logical sync every 200 ms while it runs: the publisher's WAL position and how far the
//! subscriber has applied it (for lag, the cutover fence and read-your-writes on the target),
//! and how many tables have finished their initial copy.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::setup::Admin;
use super::{connect, DbSync, Direction, SyncMode};
use crate::migration::Phase;
use crate::pool::cluster::mono_ms;
use crate::shared::Shared;

/// How often positions are sampled.
pub const INTERVAL: Duration = Duration::from_millis(200);
/// Copy progress is read every this many samples.
const COPY_EVERY: u32 = 5;

/// After a restart in the middle of a logical-sync migration: which way each database
/// replicates, from the persisted phase.
pub fn resume(shared: &Shared) {
    let m = &shared.migration;
    let rt = shared.runtime.load_full();
    let Some(cfg) = rt.config.migration.as_ref() else { return };
    if m.sync_mode() != SyncMode::Logical {
        return;
    }
    for db in super::databases(&rt, cfg) {
        let direction = match m.phase_of(&db) {
            Phase::DualWrite | Phase::ShiftReads => Some(Direction::Forward),
            Phase::Cutover => Some(Direction::Reverse),
            Phase::Off | Phase::Done => None,
        };
        m.logical.entry(&db).set_direction(direction);
    }
}

/// Runs until `stop`; idle while no logical sync runs.
pub async fn run(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut conns: HashMap<(String, bool), Admin> = HashMap::new();
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n = 0u32;
    let mut failing: std::collections::HashSet<String> = Default::default();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        if shared.migration.sync_mode() != SyncMode::Logical {
            conns.clear();
            continue;
        }
        n = n.wrapping_add(1);
        for db in shared.migration.logical.all() {
            let Some(direction) = db.direction() else { continue };
            // a failing database is checked whole every time, so its error stays until it heals
            let whole = n.is_multiple_of(COPY_EVERY) || failing.contains(&db.database);
            let error = sample(&shared, &mut conns, &db, direction, whole).await.err().map(|e| e.to_string());
            if let Some(e) = &error {
                conns.retain(|(d, _), _| d != &db.database);
                failing.insert(db.database.clone());
                tracing::debug!(database = %db.database, error = %e, "logical sync sample failed");
            } else {
                failing.remove(&db.database);
            }
            if let Ok(mut last) = db.last_error.lock() {
                *last = error;
            }
        }
    }
}

/// One sample of `db`: positions always; with `whole`, the subscriber's copy progress too.
async fn sample(
    shared: &Shared,
    conns: &mut HashMap<(String, bool), Admin>,
    db: &DbSync,
    direction: Direction,
    whole: bool,
) -> Result<(), super::LogicalError> {
    let sent_at = mono_ms();
    let publisher = admin(shared, conns, &db.database, direction.publisher()).await?;
    let (lsn, applied) = publisher.positions(direction).await?;
    db.publisher_lsn.store(lsn, Ordering::Release);
    // without a connected subscriber the last applied position stands, so the lag keeps growing
    if let Some(applied) = applied {
        db.applied_lsn.store(applied, Ordering::Release);
    }
    db.sampled_at.store(sent_at.max(1), Ordering::Release);
    if whole {
        let subscriber = admin(shared, conns, &db.database, direction.subscriber()).await?;
        let (total, ready) = subscriber.copy_progress(direction).await?;
        db.tables_total.store(total, Ordering::Relaxed);
        db.tables_ready.store(ready, Ordering::Relaxed);
    }
    if applied.is_none() {
        return Err(super::LogicalError::Connect {
            store: direction.subscriber().name(),
            database: db.database.clone(),
            message: format!("its subscription {} is not connected", direction.subscription(&db.database)),
        });
    }
    Ok(())
}

async fn admin<'a>(
    shared: &Shared,
    conns: &'a mut HashMap<(String, bool), Admin>,
    database: &str,
    store: super::Store,
) -> Result<&'a mut Admin, super::LogicalError> {
    let key = (database.to_string(), store == super::Store::Target);
    if !conns.contains_key(&key) {
        let rt = shared.runtime.load_full();
        let conn = connect(&rt, store, database).await?;
        conns.insert(key.clone(), Admin { conn, store, database: database.into() });
    }
    conns.get_mut(&key).ok_or_else(|| super::LogicalError::Connect {
        store: store.name(),
        database: database.into(),
        message: "connection lost".into(),
    })
}
