//! The sidecar admin port (HTTP) and the PgBouncer-style console: health, readiness, stats,
//! metrics and operator controls.
//!
//! Both faces read the same numbers ([`view`]) and call the same controls ([`control`]), so a
//! PAUSE from psql and a `POST /pause` behave alike. Nothing here is on the data path: every
//! number is read from counters the sessions already keep.

mod backup;
mod browser;
mod conn_clock;
pub mod console;
mod console_clients;
mod console_show;
pub mod control;
mod fd_reserve;
mod http;
pub mod metrics;
mod peer_slots;
pub mod ready;
mod routing;
mod serve;
pub mod view;

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Instant;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::proxy::StartError;
use crate::shared::Shared;

/// Admin state that lives in [`Shared`], so the console (reached through the client listener,
/// which only has `Shared`) sees what the HTTP port sees.
#[derive(Debug)]
pub struct AdminShared {
    /// The config file the proxy was started from, for RELOAD (set once by [`start`]).
    pub config_path: OnceLock<PathBuf>,
    /// Outcome of the last readiness probe, exported as `pgshift_ready`.
    pub last_ready: ready::LastProbe,
    /// The last `/ready` answer, reused within `[admin] ready_probe_interval`.
    pub ready_cache: ready::ProbeCache,
    /// Process start, for the console's per-second averages.
    pub started: Instant,
    /// Where the admin port listens, once bound (the fleet's heartbeat reports it).
    pub bound: OnceLock<String>,
}

impl Default for AdminShared {
    fn default() -> Self {
        AdminShared {
            config_path: OnceLock::new(),
            last_ready: ready::LastProbe::default(),
            ready_cache: ready::ProbeCache::default(),
            bound: OnceLock::new(),
            started: Instant::now(),
        }
    }
}

/// State handed to every HTTP handler.
#[derive(Clone)]
pub struct AdminState {
    /// The proxy's shared state.
    pub shared: Arc<Shared>,
    /// True when the admin listener is reachable only from this host (loopback or a unix socket):
    /// then an empty token lets mutating requests through.
    pub local_only: bool,
    /// The TCP listener's own IP (`None` on a unix socket): a `Host` naming it is local.
    pub listen_ip: Option<std::net::IpAddr>,
}

/// Binds the admin listener (TCP or `unix:/path`) and serves until `stop`; `None` if disabled.
pub async fn start(
    shared: Arc<Shared>,
    config_path: Option<PathBuf>,
    stop: watch::Receiver<bool>,
    bind: crate::upgrade::listen::Bind,
) -> Result<Option<(String, JoinHandle<()>)>, StartError> {
    if let Some(p) = config_path {
        let _ = shared.admin.config_path.set(p);
    }
    let listen = shared.runtime.load().config.admin.listen.clone();
    if listen.is_empty() {
        return Ok(None);
    }
    let bind_err = |source| StartError::Bind { addr: listen.clone(), source };
    let limits = serve::Limits::from_config(&shared);
    if let Some(path) = listen.strip_prefix("unix:") {
        // Replaced, not shared, in an upgrade too: the old process's admin socket file is
        // removed and the new process binds its own (the admin port is not client traffic).
        let _ = std::fs::remove_file(path);
        let l = tokio::net::UnixListener::bind(path).map_err(bind_err)?;
        let state = AdminState { shared, local_only: true, listen_ip: None };
        warn_if_tokenless(&state, &listen);
        let app = http::router(state);
        let task = tokio::spawn(serve::run(serve::Listener::Unix(l), app, limits, stop));
        return Ok(Some((listen.clone(), task)));
    }
    // SO_REUSEPORT, as the client port: a binary upgrade's new process binds it beside us.
    let l = crate::upgrade::listen::tcp(&listen, bind).await.map_err(bind_err)?;
    let local = l.local_addr().map_err(bind_err)?;
    let state = AdminState { shared, local_only: local.ip().is_loopback(), listen_ip: Some(local.ip()) };
    warn_if_tokenless(&state, &local.to_string());
    let app = http::router(state);
    let task = tokio::spawn(serve::run(serve::Listener::Tcp(l), app, limits, stop));
    Ok(Some((local.to_string(), task)))
}

/// One WARN at startup when any local process may pause, reload or reconfigure pgshift.
fn warn_if_tokenless(state: &AdminState, addr: &str) {
    if state.local_only && state.shared.runtime.load().config.admin.token.is_empty() {
        tracing::warn!(
            "admin port {addr} accepts control requests (POST /pause, /reload, /kill_client...) from any \
             local process without a token; set [admin] token, or PGSHIFT_ADMIN_TOKEN / \
             PGSHIFT_ADMIN_TOKEN_FILE, to require Authorization: Bearer <token>"
        );
    }
}
