//! A fleet of pgshift instances acting as one: the migration phase lives in a control table in
//! PostgreSQL (the store) that every instance follows, a change that moves the write target is
//! fenced across the fleet, and each instance heartbeats into the store so any of them can list
//! the others (`GET /fleet`, `SHOW PEERS`).
//!
//! - [`store`]: the SQL of the control table.
//! - [`sync`]: each instance's loop: heartbeat, follow the shared state, confirm fences.
//! - [`change`]: a phase change made through this instance, published to (and fenced across) all.

pub mod change;
pub mod store;
pub mod sync;

use serde::Serialize;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use crate::shared::Shared;

/// Why a fleet operation failed.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// `[fleet] store` cannot be used as configured.
    #[error("[fleet] store: {0}")]
    Config(String),
    /// The store could not be reached, or refused a statement.
    #[error("fleet store: {0}")]
    Store(String),
    /// Another instance is changing the phase right now.
    #[error("another instance of the fleet is changing the migration phase; try again when it is done")]
    Busy,
    /// Some live instances did not confirm a fence in time.
    #[error("fenced change refused: instances {0} did not confirm in time that they hold new transactions with none running")]
    Unconfirmed(String),
}

/// This instance's view of the fleet, shared with the admin port.
#[derive(Default)]
pub struct Fleet {
    /// State version applied here.
    pub applied: AtomicU64,
    /// Fence this instance has confirmed (held, none running).
    pub drained: AtomicU64,
    /// Set while this instance holds new transactions for the fleet (a fence, or a lost store).
    pub holding: AtomicBool,
    /// Whether an operator had paused when the hold began (restored when it ends).
    pub(crate) paused_before: AtomicBool,
    /// The fleet loop runs (this instance is a member).
    pub(crate) member: AtomicBool,
    /// Signalled when the loop has left the member list at stop.
    pub(crate) left: tokio::sync::Notify,
    view: Mutex<View>,
}

#[derive(Default)]
struct View {
    /// Last time the store answered a heartbeat.
    last_ok: Option<Instant>,
    /// Why the store did not answer, if it did not last time.
    error: Option<String>,
    /// The members seen at the last heartbeat.
    members: Vec<store::Member>,
    /// Another live instance holds this instance's id.
    id_taken: bool,
    /// The instance that made the last change.
    changed_by: u16,
}

/// `GET /fleet`.
#[derive(Debug, Serialize)]
pub struct Status {
    /// `[fleet] name`.
    pub fleet: String,
    /// This instance's id.
    pub id: u16,
    /// The store answered the last heartbeat.
    pub store_reachable: bool,
    /// Milliseconds since the store last answered (`None`: never).
    pub store_last_ok_ms_ago: Option<u64>,
    /// Why it did not.
    pub store_error: Option<String>,
    /// State version applied here.
    pub state_version: u64,
    /// The instance that made the last change of the shared state.
    pub changed_by: u16,
    /// This instance holds new transactions for the fleet.
    pub holding: bool,
    /// Live members (heard from within `heartbeat_timeout`), this one included.
    pub members: Vec<store::Member>,
}

impl Fleet {
    /// At exit: waits (at most `timeout`) until this instance has left the fleet's member list,
    /// so the others stop counting it at once rather than after `heartbeat_timeout`.
    pub async fn left(&self, timeout: std::time::Duration) {
        if self.member.load(std::sync::atomic::Ordering::Acquire) {
            let _ = tokio::time::timeout(timeout, self.left.notified()).await;
        }
    }

    /// The store answered: remember when, and what it listed.
    pub(crate) fn record_ok(&self, members: Vec<store::Member>, id_taken: bool, changed_by: u16) {
        if let Ok(mut v) = self.view.lock() {
            v.last_ok = Some(Instant::now());
            v.error = None;
            v.members = members;
            v.id_taken = id_taken;
            v.changed_by = changed_by;
        }
    }

    /// The store did not answer.
    pub(crate) fn record_error(&self, why: &str) {
        if let Ok(mut v) = self.view.lock() {
            if v.error.as_deref() != Some(why) {
                tracing::warn!("fleet store unreachable, the last phase stays in force: {why}");
            }
            v.error = Some(why.to_string());
        }
    }

    /// Time since the store last answered (`None`: never).
    pub fn since_ok(&self) -> Option<std::time::Duration> {
        self.view.lock().ok()?.last_ok.map(|t| t.elapsed())
    }

    /// The members seen at the last heartbeat.
    pub fn members(&self) -> Vec<store::Member> {
        self.view.lock().map(|v| v.members.clone()).unwrap_or_default()
    }

    /// What `GET /fleet` shows.
    pub fn status(&self, shared: &Shared) -> Status {
        let rt = shared.runtime.load();
        let v = self.view.lock();
        let (last_ok, error, members, changed_by) = match &v {
            Ok(v) => (v.last_ok, v.error.clone(), v.members.clone(), v.changed_by),
            Err(_) => (None, None, Vec::new(), 0),
        };
        Status {
            fleet: rt.config.fleet.name.clone(),
            id: rt.config.fleet.id,
            store_reachable: last_ok.is_some() && error.is_none(),
            store_last_ok_ms_ago: last_ok.map(|t| t.elapsed().as_millis() as u64),
            store_error: error,
            state_version: self.applied.load(Ordering::Acquire),
            changed_by,
            holding: self.holding.load(Ordering::Acquire),
            members,
        }
    }

    /// Why `/ready` should answer 503 for the fleet, if it should: another live instance holds
    /// this id, or the store has been silent for too long while a migration is under way (the
    /// instance holds new transactions then: it could miss a fenced flip of the write target).
    /// A silent store with no migration under way is only reported (`ready_note`).
    pub fn not_ready(&self, shared: &Shared) -> Option<String> {
        let rt = shared.runtime.load();
        if !sync::store_on(&rt) {
            return None;
        }
        if self.view.lock().is_ok_and(|v| v.id_taken) {
            return Some(format!("another live instance uses [fleet] id = {}", rt.config.fleet.id));
        }
        if self.holding.load(Ordering::Acquire) && sync::store_lost(self, &rt) {
            return Some(format!(
                "the fleet store has not answered for {}s: the migration phase is held at {} and new transactions \
                 wait until the store answers",
                self.since_ok().map_or(0, |d| d.as_secs()),
                shared.migration.phase().name()
            ));
        }
        None
    }

    /// A line for `/ready` when the store is silent but no migration is under way.
    pub fn ready_note(&self, shared: &Shared) -> Option<String> {
        let rt = shared.runtime.load();
        if !sync::store_on(&rt) || !sync::store_lost(self, &rt) {
            return None;
        }
        Some(format!("fleet store unreachable; phase held at {}", shared.migration.phase().name()))
    }
}
