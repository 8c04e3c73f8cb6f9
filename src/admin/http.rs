//! The HTTP routes: read-only GETs for probes and dashboards, bearer-token POSTs for controls.

use axum::extract::{FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use std::time::Duration;

use super::{control, metrics, ready, view, AdminState};
use crate::config::Dur;

/// The admin API.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/health", get(|| async { "ok\n" }))
        .route("/ready", get(ready_handler))
        .route("/stats", get(|State(s): State<AdminState>| async move { Json(view::stats(&s.shared)) }))
        .route("/metrics", get(metrics_handler))
        .route("/clients", get(|State(s): State<AdminState>| async move { Json(s.shared.sessions.infos()) }))
        .route("/servers", get(servers))
        .route("/config", get(config))
        .route("/pause", post(pause))
        .route("/resume", post(resume))
        .route("/reload", post(reload))
        .route("/reconnect", post(reconnect))
        .route("/kill_client", post(kill_client))
        .route("/fleet", get(fleet))
        .merge(super::routing::router())
        .merge(super::backup::router())
        .layer(axum::middleware::from_fn_with_state(state.clone(), super::browser::guard))
        .with_state(state)
}

/// Proof that a request may change things: `Authorization: Bearer <[admin] token>`, or no token
/// configured and a listener only this host can reach.
pub struct Authorized;

impl FromRequestParts<AdminState> for Authorized {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, s: &AdminState) -> Result<Self, Self::Rejection> {
        let token = s.shared.runtime.load().config.admin.token.clone();
        if token.is_empty() && s.local_only {
            return Ok(Authorized);
        }
        let given = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        match given {
            Some(g) if !token.is_empty() && constant_time_eq(g.as_bytes(), token.as_bytes()) => Ok(Authorized),
            _ => {
                let mut r = (
                    StatusCode::UNAUTHORIZED,
                    Json(json!({"error": "this endpoint needs Authorization: Bearer <[admin] token>"})),
                )
                    .into_response();
                r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                Err(r)
            }
        }
    }
}

/// Compares without an early exit, so response timing reveals neither how much of a guess matched
/// nor the token's length: both sides are hashed to 32 bytes first.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use sha2::{Digest, Sha256};
    let (a, b) = (Sha256::digest(a), Sha256::digest(b));
    a.iter().zip(b.iter()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn ready_handler(State(s): State<AdminState>) -> Response {
    use crate::pool::cluster::TopologyState::{Discovering, SplitBrain};
    let rt = s.shared.runtime.load();
    if rt.clusters.iter().any(|c| c.failovers.state() == SplitBrain) {
        let why = "split brain: several nodes are out of recovery on the same timeline; pgshift writes to none";
        return (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}\n")).into_response();
    }
    if rt.config.routing.role_discovery && rt.clusters.iter().any(|c| c.failovers.state() == Discovering) {
        let why = "role discovery has not heard from every node yet";
        return (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}\n")).into_response();
    }
    if let Some(why) = s.shared.fleet.not_ready(&s.shared) {
        return (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}\n")).into_response();
    }
    let note = s.shared.fleet.ready_note(&s.shared).map(|n| format!("; {n}")).unwrap_or_default();
    match ready::cached(&s.shared).await {
        Ok(took) => {
            (StatusCode::OK, format!("ready: primary answered in {} ms{note}\n", took.as_millis())).into_response()
        }
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}\n")).into_response(),
    }
}

/// The fleet as this instance sees it (404 when it is not in a fleet).
async fn fleet(State(s): State<AdminState>) -> Response {
    if !s.shared.runtime.load().config.fleet.enabled() {
        return (StatusCode::NOT_FOUND, "not in a fleet: [fleet] id is not set\n").into_response();
    }
    Json(s.shared.fleet.status(&s.shared)).into_response()
}

async fn metrics_handler(State(s): State<AdminState>) -> Response {
    match metrics::render(&s.shared) {
        Ok(text) => ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], text).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("cannot encode metrics: {e}\n")).into_response(),
    }
}

async fn servers(State(s): State<AdminState>) -> Response {
    let pools: Vec<_> = view::pool_groups(&s.shared)
        .into_iter()
        .flat_map(|g| {
            let (database, user) = (g.database, g.user);
            g.backends.into_iter().map(move |b| {
                json!({
                    "database": database, "user": user, "backend": b.backend, "address": b.address,
                    "sv_active": b.sizes.sv_active, "sv_idle": b.sizes.sv_idle, "sv_login": b.sizes.sv_login,
                    "connects": b.connects, "connect_errors": b.connect_errors,
                })
            })
        })
        .collect();
    let leased: Vec<_> = s
        .shared
        .sessions
        .all()
        .iter()
        .filter_map(|h| {
            let server = h.server.lock().ok().and_then(|g| g.clone())?;
            Some(json!({
                "conn_id": server.conn_id, "client_id": h.id, "user": &*h.user, "database": &*h.database,
                "server_addr": server.peer.to_string(), "backend_pid": server.key.0,
            }))
        })
        .collect();
    Json(json!({ "pools": pools, "leased": leased })).into_response()
}

async fn config(State(s): State<AdminState>) -> Response {
    // Through redacted_toml so that one function decides what is secret.
    let text = s.shared.runtime.load().config.redacted_toml();
    match toml::from_str::<toml::Table>(&text) {
        Ok(t) => Json(t).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("cannot render config: {e}\n")).into_response(),
    }
}

/// `?timeout=10s` on /pause.
#[derive(Deserialize)]
struct PauseParams {
    timeout: Option<String>,
}

async fn pause(_: Authorized, State(s): State<AdminState>, Query(p): Query<PauseParams>) -> Response {
    let timeout = match p.timeout.as_deref().map(Dur::parse) {
        None => s.shared.runtime.load().config.proxy.shutdown_timeout.0,
        Some(Ok(d)) => d.0,
        Some(Err(e)) => return (StatusCode::BAD_REQUEST, Json(json!({"error": e}))).into_response(),
    };
    Json(control::pause(&s.shared, timeout.min(Duration::from_secs(3600))).await).into_response()
}

async fn resume(_: Authorized, State(s): State<AdminState>) -> Json<serde_json::Value> {
    let was_paused = control::resume(&s.shared);
    Json(json!({"paused": false, "was_paused": was_paused}))
}

async fn reload(_: Authorized, State(s): State<AdminState>) -> Response {
    match control::reload(&s.shared) {
        Ok(()) => Json(json!({"reloaded": true})).into_response(),
        Err(problems) => {
            (StatusCode::BAD_REQUEST, Json(json!({"reloaded": false, "problems": problems}))).into_response()
        }
    }
}

async fn reconnect(_: Authorized, State(s): State<AdminState>) -> Json<serde_json::Value> {
    let epoch = control::reconnect(&s.shared);
    Json(json!({"reconnect_epoch": epoch}))
}

/// `?id=N` on /kill_client.
#[derive(Deserialize)]
struct KillParams {
    id: u64,
}

async fn kill_client(_: Authorized, State(s): State<AdminState>, Query(p): Query<KillParams>) -> Response {
    if control::kill_client(&s.shared, p.id) {
        Json(json!({"killed": p.id})).into_response()
    } else {
        (StatusCode::NOT_FOUND, Json(json!({"error": format!("no client with id {}", p.id)}))).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn token_comparison_matches_only_the_same_bytes() {
        assert!(constant_time_eq(b"s3cret-token", b"s3cret-token"));
        assert!(!constant_time_eq(b"s3cret-token", b"s3cret-tokeN"));
        assert!(!constant_time_eq(b"s3cret-token", b"s3cret-token-longer"));
        assert!(!constant_time_eq(b"", b"s3cret-token"));
    }
}
