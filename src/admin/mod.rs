//! The sidecar admin port (HTTP): health, readiness, stats, metrics and operator controls.

use axum::routing::get;
use axum::{Json, Router};
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::proxy::StartError;
use crate::shared::Shared;

/// State handed to every handler.
#[derive(Clone)]
pub struct AdminState {
    /// The proxy's shared state.
    pub shared: Arc<Shared>,
    /// Where to reload the config from.
    pub config_path: Option<PathBuf>,
}

/// Binds the admin listener (TCP or `unix:/path`) and serves until `stop`; `None` if disabled.
pub async fn start(
    shared: Arc<Shared>,
    config_path: Option<PathBuf>,
    mut stop: watch::Receiver<bool>,
) -> Result<Option<(String, JoinHandle<()>)>, StartError> {
    let listen = shared.runtime.load().config.admin.listen.clone();
    if listen.is_empty() {
        return Ok(None);
    }
    let app = router(AdminState { shared, config_path });
    let bind_err = |source| StartError::Bind { addr: listen.clone(), source };
    if let Some(path) = listen.strip_prefix("unix:") {
        let _ = std::fs::remove_file(path);
        let l = tokio::net::UnixListener::bind(path).map_err(bind_err)?;
        let task = tokio::spawn(async move {
            let _ = axum::serve(l, app)
                .with_graceful_shutdown(async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .await;
        });
        return Ok(Some((listen.clone(), task)));
    }
    let l = tokio::net::TcpListener::bind(&listen).await.map_err(bind_err)?;
    let addr = l.local_addr().map_err(bind_err)?.to_string();
    let task = tokio::spawn(async move {
        let _ = axum::serve(l, app)
            .with_graceful_shutdown(async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await;
    });
    Ok(Some((addr, task)))
}

fn router(state: AdminState) -> Router {
    Router::new().route("/health", get(|| async { "ok\n" })).route("/clients", get(clients)).with_state(state)
}

async fn clients(
    axum::extract::State(s): axum::extract::State<AdminState>,
) -> Json<Vec<crate::client::registry::ClientInfo>> {
    Json(s.shared.sessions.infos())
}
