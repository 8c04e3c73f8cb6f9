//! `POST /backup` (a backup now, answered when done) and the backup and WAL-archiver metrics.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use prometheus_client::encoding::DescriptorEncoder;
use serde::Deserialize;
use serde_json::json;
use std::fmt;

use super::http::Authorized;
use super::metrics::{family, Labels, Value};
use super::AdminState;
use crate::backup::{BackupError, MetricsView};

/// The routes of this module.
pub fn router() -> Router<AdminState> {
    Router::new().route("/backup", post(backup))
}

/// The optional body of `POST /backup`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct BackupRequest {
    /// Database names to back up instead of the configured ones.
    databases: Option<Vec<String>>,
}

/// Runs a backup and answers when it is done: 200 with every file, or 500 naming what failed.
/// The body is read whatever its Content-Type, so a `curl -d` without a JSON header is not
/// silently taken for "back up everything".
async fn backup(_: Authorized, State(s): State<AdminState>, body: Bytes) -> Response {
    let req: BackupRequest = if body.iter().all(u8::is_ascii_whitespace) {
        BackupRequest::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(r) => r,
            Err(e) => {
                let why = format!("the body must be {{\"databases\": [\"name\", ...]}} or empty: {e}");
                return (StatusCode::BAD_REQUEST, Json(json!({"ok": false, "error": why}))).into_response();
            }
        }
    };
    match crate::backup::run_now(&s.shared, req.databases).await {
        Ok(report) => {
            let code = if report.ok { StatusCode::OK } else { StatusCode::INTERNAL_SERVER_ERROR };
            (code, Json(report)).into_response()
        }
        Err(e) => {
            let code = match e {
                BackupError::NotConfigured => StatusCode::NOT_FOUND,
                BackupError::Busy => StatusCode::CONFLICT,
                BackupError::BadName { .. } | BackupError::UnknownDatabase(_) => StatusCode::BAD_REQUEST,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            };
            (code, Json(json!({"ok": false, "error": e.to_string()}))).into_response()
        }
    }
}

/// The backup families per database and the archiver families per cluster.
pub fn encode_metrics(v: &MetricsView, enc: &mut DescriptorEncoder) -> fmt::Result {
    let db = |name: &String| -> Labels { vec![("database", name.clone())] };
    let dbs = || v.databases.iter();
    let success = dbs().map(|(n, s)| (db(n), Value::Gauge(s.last_success_ms.map_or(0.0, |t| t as f64 / 1e3))));
    family(
        enc,
        "pgshift_backup_last_success_timestamp_seconds",
        "Start of the newest successful backup, Unix time (0: none yet)",
        success.collect(),
    )?;
    let took = dbs().filter_map(|(n, s)| Some((db(n), Value::Gauge(s.last_duration_s?))));
    family(enc, "pgshift_backup_last_duration_seconds", "How long the newest successful backup took", took.collect())?;
    let size = dbs().filter_map(|(n, s)| Some((db(n), Value::Gauge(s.last_size? as f64))));
    family(enc, "pgshift_backup_last_size_bytes", "Size of the newest successful backup", size.collect())?;
    let failed = dbs().map(|(n, s)| (db(n), Value::Counter(s.failures as f64)));
    family(enc, "pgshift_backup_failures", "Backups that failed", failed.collect())?;

    let cl = |name: &String| -> Labels { vec![("cluster", name.clone())] };
    let arch = || v.archiver.iter();
    family(
        enc,
        "pgshift_archiver_last_archived_timestamp_seconds",
        "When the primary's archiver last archived a WAL file, Unix time (0: never)",
        arch().map(|(c, a)| (cl(c), Value::Gauge(a.last_archived_s))).collect(),
    )?;
    family(
        enc,
        "pgshift_archiver_last_failed_timestamp_seconds",
        "When the primary's archiver last failed to archive a WAL file, Unix time (0: never)",
        arch().map(|(c, a)| (cl(c), Value::Gauge(a.last_failed_s))).collect(),
    )?;
    family(
        enc,
        "pgshift_archiver_archived",
        "WAL files the primary archived (pg_stat_archiver)",
        arch().map(|(c, a)| (cl(c), Value::Counter(a.archived as f64))).collect(),
    )?;
    family(
        enc,
        "pgshift_archiver_failed",
        "Failed WAL archiving attempts on the primary (pg_stat_archiver)",
        arch().map(|(c, a)| (cl(c), Value::Counter(a.failed as f64))).collect(),
    )
}
