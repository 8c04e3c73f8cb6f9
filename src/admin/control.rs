//! Operator controls shared by the HTTP port and the console: PAUSE, RESUME, RELOAD, RECONNECT,
//! and killing a client.

use serde::Serialize;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::shared::Shared;

/// How often PAUSE looks at the pools while it waits for leased connections to come back.
const PAUSE_POLL: Duration = Duration::from_millis(20);

/// What PAUSE achieved.
#[derive(Debug, Serialize)]
pub struct PauseOutcome {
    /// Always true after the call: new transactions are held.
    pub paused: bool,
    /// True if the proxy was already paused.
    pub was_paused: bool,
    /// True if every server connection came back (no transaction still running).
    pub drained: bool,
    /// Server connections still leased when the call returned.
    pub sv_active: usize,
    /// How long the call waited, in seconds.
    pub waited: f64,
}

/// Leased server connections over all pools.
pub fn active_servers(shared: &Shared) -> usize {
    shared.pools.all().iter().map(|p| p.snapshot().sv_active).sum()
}

/// Holds new transactions (sessions wait in `attach` while `paused` is set), then waits up to
/// `timeout` for running ones to give their server connections back.
pub async fn pause(shared: &Shared, timeout: Duration) -> PauseOutcome {
    let was_paused = shared.paused.send_replace(true);
    if !was_paused {
        tracing::info!("PAUSE: new transactions are held");
    }
    let started = Instant::now();
    loop {
        let sv_active = active_servers(shared);
        if sv_active == 0 || started.elapsed() >= timeout {
            return PauseOutcome {
                paused: true,
                was_paused,
                drained: sv_active == 0,
                sv_active,
                waited: started.elapsed().as_secs_f64(),
            };
        }
        tokio::time::sleep(PAUSE_POLL).await;
    }
}

/// Releases held transactions; returns whether the proxy was paused.
pub fn resume(shared: &Shared) -> bool {
    let was = shared.paused.send_replace(false);
    if was {
        tracing::info!("RESUME: held transactions proceed");
    }
    was
}

/// Re-reads the config file the proxy was started from; the old config stays on error.
pub fn reload(shared: &Arc<Shared>) -> Result<(), Vec<String>> {
    let path = shared.admin.config_path.get().map(|p| p.as_path());
    let r = crate::proxy::reload(shared, path);
    if let Err(problems) = &r {
        tracing::warn!("RELOAD refused: {}", problems.join("; "));
    }
    r
}

/// Closes idle server connections now and leased ones when they are checked in (each pool
/// remembers when RECONNECT happened and closes connections opened before it). Returns the new
/// reconnect epoch (how many RECONNECTs so far).
pub fn reconnect(shared: &Shared) -> u64 {
    let epoch = shared.reconnect_epoch.fetch_add(1, Ordering::Relaxed) + 1;
    for pool in shared.pools.all() {
        pool.reconnect();
    }
    tracing::info!(epoch, "RECONNECT: server connections will be replaced");
    epoch
}

/// Asks a client's session to close (FATAL 57P01); false if there is no such client.
pub fn kill_client(shared: &Shared, id: u64) -> bool {
    let found = shared.sessions.kill(id);
    if found {
        tracing::info!(client = id, "client killed by an administrator");
    }
    found
}
