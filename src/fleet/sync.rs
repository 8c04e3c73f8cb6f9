//! Each instance's fleet loop: follow the shared state (on NOTIFY, or a poll every 250 ms),
//! publish changes made here on their own (the read-shift ramp's steps), confirm fences, and
//! heartbeat with what this instance is doing.
//!
//! Holding: while another instance makes a fenced change, or while the store is silent during a
//! migration, this instance holds new transactions (as PAUSE does). A silent store with a
//! migration under way could otherwise let this instance write to the old target after the others
//! flipped; the others count it gone after `heartbeat_timeout`, and it holds from
//! `heartbeat_timeout - heartbeat_interval` on, so it stops before they stop waiting for it.

use rand::Rng;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch, Notify};

use super::store::{self, Heartbeat, StateRow};
use super::{Fleet, FleetError};
use crate::migration::{Persisted, Phase};
use crate::server::ServerConn;
use crate::shared::{Runtime, Shared};

/// How often the shared state is read when no notification came.
const POLL: Duration = Duration::from_millis(250);

/// True when this instance uses the store: it is part of a fleet.
pub fn store_on(rt: &Runtime) -> bool {
    rt.config.fleet.enabled()
}

/// True when the store has been silent long enough that the others may count this instance gone.
pub fn store_lost(fleet: &Fleet, rt: &Runtime) -> bool {
    let f = &rt.config.fleet;
    let bound = f.heartbeat_timeout.0.saturating_sub(f.heartbeat_interval.0);
    fleet.since_ok().is_none_or(|d| d >= bound)
}

fn migration_active(shared: &Shared) -> bool {
    let m = &shared.migration;
    shared.runtime.load().config.migration.is_some()
        && (m.phase() != Phase::Off || m.own_phases().values().any(|o| o.phase != Phase::Off))
}

/// Starts the loop and waits (at most `heartbeat_timeout`) for its first look at the store, so
/// an instance joining a fleet mid-migration takes the fleet's phase before its first client.
pub async fn start(shared: &Arc<Shared>, stop: watch::Receiver<bool>) -> Option<tokio::task::JoinHandle<()>> {
    let rt = shared.runtime.load_full();
    if !store_on(&rt) {
        return None;
    }
    shared.fleet.member.store(true, Ordering::Release);
    let first = Arc::new(Notify::new());
    let task = tokio::spawn(run(shared.clone(), stop, first.clone()));
    if tokio::time::timeout(rt.config.fleet.heartbeat_timeout.0, first.notified()).await.is_err() {
        tracing::warn!("the fleet store did not answer at start; serving with the phase this instance had");
    }
    Some(task)
}

/// The loop's own state between rounds.
struct Looper {
    shared: Arc<Shared>,
    incarnation: String,
    /// A fence of another instance's that this one is holding for.
    pending_fence: u64,
    /// A wait for this instance's transactions to end is running for this fence.
    waiting_for: u64,
    acks: (mpsc::Sender<u64>, mpsc::Receiver<u64>),
    last_beat: Option<Instant>,
    /// `Migration::local_changes` when this loop last published or applied.
    published_changes: u64,
}

/// How long a stopping instance tries to remove its member row.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(1);

async fn run(shared: Arc<Shared>, mut stop: watch::Receiver<bool>, first: Arc<Notify>) {
    let incarnation = format!("{:016x}", rand::thread_rng().gen::<u64>());
    let published_changes = shared.migration.local_changes();
    let mut l = Looper {
        shared,
        incarnation,
        pending_fence: 0,
        waiting_for: 0,
        acks: mpsc::channel(4),
        last_beat: None,
        published_changes,
    };
    let mut conn: Option<ServerConn> = None;
    // After the stop signal (SIGTERM's drain, an upgrade's handover) this instance stays a member,
    // confirming fences, until its last client has left; then it leaves the member list.
    let mut stopping = false;
    loop {
        if stopping && l.shared.sessions.is_empty() {
            break;
        }
        let rt = l.shared.runtime.load_full();
        if conn.is_none() {
            match connect(&rt).await {
                Ok(c) => conn = Some(c),
                Err(e) => l.shared.fleet.record_error(&e.to_string()),
            }
        }
        if let Some(c) = conn.as_mut() {
            if let Err(e) = l.round(&rt, c).await {
                l.shared.fleet.record_error(&e.to_string());
                conn = None;
            } else {
                first.notify_one();
            }
        }
        l.hold_if_needed(&rt);
        let wait = if conn.is_some() { POLL } else { rt.config.fleet.heartbeat_interval.0 };
        tokio::select! {
            got = async { match conn.as_mut() { Some(c) => c.read_frame().await.map(|_| ()), None => std::future::pending().await } } => {
                if got.is_err() { conn = None; }
            }
            Some(fence) = l.acks.1.recv() => {
                l.shared.fleet.drained.store(fence, Ordering::Release);
                l.last_beat = None; // confirm at once
            }
            _ = tokio::time::sleep(wait) => {}
            _ = stop.wait_for(|s| *s), if !stopping => stopping = true,
        }
    }
    set_hold(&l.shared, false);
    if let Some(c) = conn.as_mut() {
        let rt = l.shared.runtime.load_full();
        let f = &rt.config.fleet;
        let _ = tokio::time::timeout(LEAVE_TIMEOUT, store::leave(c, &f.name, f.id, &l.incarnation)).await;
    }
    l.shared.fleet.left.notify_one();
}

/// A store connection that LISTENs for changes.
async fn connect(rt: &Runtime) -> Result<ServerConn, FleetError> {
    let mut c = store::connect(rt).await?;
    match c.run_internal(&format!("LISTEN {}", store::CHANNEL)).await {
        Ok(None) => Ok(c),
        Ok(Some(e)) => Err(FleetError::Store(e)),
        Err(e) => Err(FleetError::Store(e.to_string())),
    }
}

impl Looper {
    /// One look at the store: the state, fences, local changes to publish, the heartbeat.
    async fn round(&mut self, rt: &Runtime, c: &mut ServerConn) -> Result<(), FleetError> {
        let f = &rt.config.fleet;
        let mut state = store::read_state(c, &f.name).await?;
        if state.state.is_none() {
            let json = encode(&self.shared.migration.snapshot())?;
            store::seed_state(c, &f.name, &json, f.id).await?;
            state = store::read_state(c, &f.name).await?;
        }
        // A change made through this instance's admin port publishes by itself, holding
        // `changing`; the loop stays out of its way.
        let shared = self.shared.clone();
        if let Ok(_changing) = shared.migration.changing.try_lock() {
            self.follow(rt, c, &state).await?;
        }
        let beat_due = self.last_beat.is_none_or(|t| t.elapsed() >= f.heartbeat_interval.0);
        if beat_due {
            self.beat(rt, c, &state).await?;
        }
        self.fence(rt, c, &state).await
    }

    /// Applies a newer shared state, or publishes a change made here.
    async fn follow(&mut self, rt: &Runtime, c: &mut ServerConn, state: &StateRow) -> Result<(), FleetError> {
        let fleet = &self.shared.fleet;
        let m = &self.shared.migration;
        let applied = fleet.applied.load(Ordering::Acquire);
        if state.version > applied {
            let saved = decode(state.state.as_deref().unwrap_or_default())?;
            if m.apply_shared(&saved).map_err(|e| FleetError::Store(e.to_string()))? {
                m.ramp.stop();
                crate::migration::logical::monitor::resume(&self.shared);
            }
            fleet.applied.store(state.version, Ordering::Release);
            self.published_changes = m.local_changes();
        } else if m.local_changes() != self.published_changes {
            let (next, json) = (state.version + 1, encode(&m.snapshot())?);
            self.published_changes = m.local_changes();
            if store::publish(c, &rt.config.fleet.name, next, &json, rt.config.fleet.id).await? {
                fleet.applied.store(next, Ordering::Release);
            }
        }
        Ok(())
    }

    /// The heartbeat, and the member list it returns with.
    async fn beat(&mut self, rt: &Runtime, c: &mut ServerConn, state: &StateRow) -> Result<(), FleetError> {
        let f = &rt.config.fleet;
        let shared = &self.shared;
        let servers: usize = shared.pools.all().iter().map(|p| p.snapshot()).map(|s| s.sv_active + s.sv_idle).sum();
        let hb = Heartbeat {
            incarnation: self.incarnation.clone(),
            listen: shared.listen_addr.get().map(|a| a.to_string()).unwrap_or_default(),
            admin: shared.admin.bound.get().cloned().unwrap_or_default(),
            phase: shared.migration.phase().name().to_string(),
            clients: shared.sessions.infos().len() as u64,
            servers: servers as u64,
            applied: shared.fleet.applied.load(Ordering::Acquire),
            drained: shared.fleet.drained.load(Ordering::Acquire),
        };
        let timeout_ms = f.heartbeat_timeout.0.as_millis() as u64;
        let ours = store::heartbeat(c, &f.name, f.id, &hb, timeout_ms).await?;
        if !ours {
            tracing::error!(id = f.id, "another live instance of the fleet uses this [fleet] id");
        }
        let members = store::members(c, &f.name, timeout_ms).await?;
        shared.fleet.record_ok(members, !ours, state.changed_by);
        self.last_beat = Some(Instant::now());
        Ok(())
    }

    /// Another instance's fence: hold, wait for this instance's transactions (and mirror) to
    /// end, confirm. A fence whose maker is gone is withdrawn.
    async fn fence(&mut self, rt: &Runtime, c: &mut ServerConn, state: &StateRow) -> Result<(), FleetError> {
        let f = &rt.config.fleet;
        let theirs = state.fence > 0 && state.fence_by != f.id;
        let cached_gone = !self.shared.fleet.members().iter().any(|m| m.id == state.fence_by);
        if theirs && cached_gone {
            // The list may be a heartbeat old (a maker that just joined): ask the store.
            let live = store::members(c, &f.name, f.heartbeat_timeout.0.as_millis() as u64).await?;
            if !live.iter().any(|m| m.id == state.fence_by) {
                tracing::warn!(by = state.fence_by, "a fenced change's instance is gone; its fence is withdrawn");
                store::lower_fence(c, &f.name, state.fence).await?;
                self.pending_fence = 0;
                return Ok(());
            }
        }
        self.pending_fence = if theirs && state.version < state.fence { state.fence } else { 0 };
        let fence = self.pending_fence;
        if fence == 0 || self.waiting_for == fence || self.shared.fleet.drained.load(Ordering::Acquire) >= fence {
            return Ok(());
        }
        set_hold(&self.shared, true);
        self.waiting_for = fence;
        let (shared, ack) = (self.shared.clone(), self.acks.0.clone());
        let drain = rt.config.migration.as_ref().map_or(Duration::from_secs(30), |m| m.drain_timeout.0);
        tokio::spawn(async move {
            let quiet = crate::migration::control::wait_idle(&shared, drain).await;
            if quiet && shared.migration.mirror.drained(drain).await {
                let _ = ack.send(fence).await;
            } else {
                tracing::warn!(fence, "this instance's transactions did not end in time for a fenced change");
            }
        });
        Ok(())
    }

    /// Holds new transactions while a fence is pending here or the store is silent during a
    /// migration; releases otherwise.
    fn hold_if_needed(&mut self, rt: &Runtime) {
        let fleet = &self.shared.fleet;
        let lost = store_lost(fleet, rt) && migration_active(&self.shared);
        if lost && !fleet.holding.load(Ordering::Acquire) {
            tracing::warn!("the fleet store is silent during a migration: holding new transactions until it answers");
        }
        if self.pending_fence == 0 {
            self.waiting_for = 0;
        }
        set_hold(&self.shared, lost || self.pending_fence != 0);
    }
}

/// Holds (or releases) new transactions for the fleet, keeping an operator's PAUSE as it was.
fn set_hold(shared: &Shared, on: bool) {
    let fleet = &shared.fleet;
    if fleet.holding.swap(on, Ordering::AcqRel) == on {
        return;
    }
    if on {
        fleet.paused_before.store(*shared.paused.borrow(), Ordering::Release);
        shared.paused.send_replace(true);
    } else {
        shared.paused.send_replace(fleet.paused_before.load(Ordering::Acquire));
    }
}

/// The state as JSON for the control table.
pub fn encode(p: &Persisted) -> Result<String, FleetError> {
    serde_json::to_string(p).map_err(|e| FleetError::Store(format!("cannot encode the state: {e}")))
}

/// The control table's JSON as a state.
pub fn decode(json: &str) -> Result<Persisted, FleetError> {
    serde_json::from_str(json).map_err(|e| FleetError::Store(format!("the control table's state is not readable: {e}")))
}
