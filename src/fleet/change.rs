//! A phase change made through this instance, for the whole fleet: one change at a time across
//! the fleet (a table lock in the store), taken from the latest shared state, published to
//! the control table and announced with NOTIFY. When the write target flips, the change is fenced:
//! every live instance holds new transactions and confirms that none of its own runs (and its
//! mirror has drained) before anything flips.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::store;
use super::sync::{decode, encode, store_on};
use super::FleetError;
use crate::server::ServerConn;
use crate::shared::Shared;

/// A change in progress: `_lock` holds the fleet's change lock until dropped, `conn` writes.
pub struct Change {
    _lock: ServerConn,
    conn: ServerConn,
    name: String,
    id: u16,
    timeout_ms: u64,
    /// The fence raised for this change, if it is fenced.
    fence: Option<u64>,
    /// The new state is in the store.
    published: bool,
}

/// Takes the fleet's change lock and brings this instance up to the shared state; `None` when
/// this instance is not in a fleet. The caller holds `Migration::changing`.
pub async fn begin(shared: &Shared) -> Result<Option<Change>, FleetError> {
    let rt = shared.runtime.load_full();
    if !store_on(&rt) {
        return Ok(None);
    }
    let f = &rt.config.fleet;
    let mut lock = store::connect(&rt).await?;
    if !store::try_lock(&mut lock, &f.name).await? {
        return Err(FleetError::Busy);
    }
    let mut conn = store::connect(&rt).await?;
    let state = store::read_state(&mut conn, &f.name).await?;
    if state.version > shared.fleet.applied.load(Ordering::Acquire) {
        if let Some(json) = state.state.as_deref() {
            shared.migration.apply_shared(&decode(json)?).map_err(|e| FleetError::Store(e.to_string()))?;
            crate::migration::logical::monitor::resume(shared);
        }
        shared.fleet.applied.store(state.version, Ordering::Release);
    }
    Ok(Some(Change {
        _lock: lock,
        conn,
        name: f.name.clone(),
        id: f.id,
        timeout_ms: f.heartbeat_timeout.0.as_millis() as u64,
        fence: None,
        published: false,
    }))
}

impl Change {
    /// Raises the fence and waits (until `deadline`) for every other live instance to confirm it.
    pub async fn fence(&mut self, within: Duration) -> Result<(), FleetError> {
        let fence = store::raise_fence(&mut self.conn, &self.name, self.id).await?;
        self.fence = Some(fence);
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let members = store::members(&mut self.conn, &self.name, self.timeout_ms).await?;
            let waiting: Vec<String> =
                members.iter().filter(|m| m.id != self.id && m.drained < fence).map(|m| m.id.to_string()).collect();
            if waiting.is_empty() {
                return Ok(());
            }
            if store::read_state(&mut self.conn, &self.name).await?.fence != fence {
                self.fence = None;
                return Err(FleetError::Unconfirmed(format!("{} (the fence was withdrawn)", waiting.join(", "))));
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(FleetError::Unconfirmed(waiting.join(", ")));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Writes this instance's state (just changed) as the fleet's, clearing the fence.
    pub async fn publish(&mut self, shared: &Shared) -> Result<(), FleetError> {
        let state = store::read_state(&mut self.conn, &self.name).await?;
        let version = self.fence.unwrap_or(state.version + 1);
        let json = encode(&shared.migration.snapshot())?;
        if !store::publish(&mut self.conn, &self.name, version, &json, self.id).await? {
            return Err(FleetError::Store(format!("the shared state moved on (version {})", state.version)));
        }
        shared.fleet.applied.store(version, Ordering::Release);
        self.published = true;
        Ok(())
    }

    /// Withdraws the fence of a change that did not happen (the others resume as they were).
    pub async fn abort(&mut self) {
        if let Some(fence) = self.fence.take() {
            if let Err(e) = store::lower_fence(&mut self.conn, &self.name, fence).await {
                tracing::warn!(
                    "cannot withdraw the fleet fence; the others withdraw it when they see this instance gone: {e}"
                );
            }
        }
    }

    /// True once the new state is in the store.
    pub fn published(&self) -> bool {
        self.published
    }
}
