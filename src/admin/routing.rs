//! Admin endpoints for routing and migration: `GET /route` explains a routing decision;
//! `GET /migration`, `POST /migration/phase` and `POST /migration/verify` steer a migration.

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;

use super::http::Authorized;
use super::AdminState;
use crate::client::route::decide;
use crate::client::state::RouteOverride;
use crate::migration::{control, MigrationError, Phase};
use crate::router::Target;

/// The routes of this module.
pub fn router() -> Router<AdminState> {
    Router::new()
        .route("/route", get(route))
        .route("/migration", get(status))
        .route("/migration/phase", post(phase))
        .route("/migration/verify", post(verify))
}

#[derive(Deserialize)]
struct RouteQuery {
    sql: String,
}

/// How a statement would be routed now, and why.
async fn route(State(s): State<AdminState>, Query(q): Query<RouteQuery>) -> Response {
    let rt = s.shared.runtime.load_full();
    // Not through the sessions' cache: anyone who can connect may ask, and a flood of texts
    // would flush the texts the sessions reuse.
    let class = Arc::new(crate::router::classify::classify(&q.sql, &rt.classifier));
    let decision = decide(&rt, RouteOverride::Auto, std::slice::from_ref(&class));
    let healthy: Vec<String> = rt.replicas.iter().filter(|b| b.serves_reads(&rt)).map(|b| b.name.clone()).collect();
    let (target, reason) = match decision.target {
        Target::Replica if healthy.is_empty() => ("primary", "read, but no healthy replica: the primary serves it"),
        Target::Replica => ("replica", decision.reason),
        Target::Primary => ("primary", decision.reason),
    };
    let statements: Vec<_> = class
        .statements
        .iter()
        .map(|st| {
            json!({
                "target": if st.target == Target::Replica { "replica" } else { "primary" },
                "reason": st.reason,
                "kind": format!("{:?}", st.kind).to_lowercase(),
            })
        })
        .collect();
    let migration_phase = rt.config.migration.as_ref().map(|_| s.shared.migration.phase().name());
    Json(json!({
        "target": target,
        "reason": reason,
        "statements": statements,
        "healthy_replicas": healthy,
        "migration_phase": migration_phase,
    }))
    .into_response()
}

fn error(e: &MigrationError) -> Response {
    let code = match e {
        MigrationError::NotConfigured => StatusCode::NOT_FOUND,
        MigrationError::DrainTimeout(_) | MigrationError::Persist(_) | MigrationError::CatchupTimeout { .. } => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        MigrationError::Refused(_) | MigrationError::NotReady(_) => StatusCode::CONFLICT,
        MigrationError::Logical(_) => StatusCode::BAD_GATEWAY,
        MigrationError::Fleet(crate::fleet::FleetError::Busy | crate::fleet::FleetError::Unconfirmed(_)) => {
            StatusCode::CONFLICT
        }
        MigrationError::Fleet(_) => StatusCode::SERVICE_UNAVAILABLE,
        MigrationError::BadPercent | MigrationError::BadTransition { .. } => StatusCode::BAD_REQUEST,
    };
    let mut body = json!({"error": e.to_string()});
    if let MigrationError::Refused(differences) = e {
        body["differences"] = json!(differences);
    }
    (code, Json(body)).into_response()
}

async fn status(State(s): State<AdminState>) -> Response {
    match control::status(&s.shared) {
        Ok(st) => Json(st).into_response(),
        Err(e) => error(&e),
    }
}

#[derive(Deserialize)]
struct PhaseRequest {
    phase: Phase,
    read_percent: Option<u8>,
    /// `shift_reads` only: let the autopilot raise the share.
    #[serde(default)]
    ramp: bool,
    /// One database's phase instead of the migration's.
    database: Option<String>,
}

async fn phase(_: Authorized, State(s): State<AdminState>, Json(req): Json<PhaseRequest>) -> Response {
    let shared: Arc<_> = s.shared.clone();
    let changed = match (req.ramp, req.phase, req.database.as_deref()) {
        (true, Phase::ShiftReads, None) => control::start_ramp(&shared).await,
        (true, _, _) => Err(MigrationError::NotReady(
            "\"ramp\": true goes with \"phase\": \"shift_reads\" and the migration's phase (no \"database\")".into(),
        )),
        (false, _, db) => control::change_phase_of(&shared, db, req.phase, req.read_percent).await,
    };
    match changed {
        Ok(st) => Json(st).into_response(),
        Err(e) => error(&e),
    }
}

#[derive(Deserialize, Default)]
struct VerifyRequest {
    database: Option<String>,
}

async fn verify(_: Authorized, State(s): State<AdminState>, body: Option<Json<VerifyRequest>>) -> Response {
    let req = body.map(|b| b.0).unwrap_or_default();
    match control::verify_now(&s.shared, req.database.as_deref()).await {
        Ok(report) => {
            let code = if report.error.is_some() { StatusCode::BAD_GATEWAY } else { StatusCode::OK };
            (code, Json(report)).into_response()
        }
        Err(e) => error(&e),
    }
}
