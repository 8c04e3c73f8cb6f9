//! The WAL archiver's status on each cluster's primary (`pg_stat_archiver`), read every
//! `[backup] archiver_interval` and kept for `/metrics`: a scrape reads the kept numbers and never
//! waits on PostgreSQL. Point-in-time recovery itself is PostgreSQL's (archive_command,
//! pgBackRest, WAL-G); this shows whether it is working.

use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

use super::ArchiverStatus;
use crate::pool::cluster::Cluster;
use crate::server::{LoginSpec, ServerConn};
use crate::shared::{Runtime, Shared};

/// Bound on one read (login and query).
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Looked at this often while the archiver is not watched (to notice a reload).
const IDLE: Duration = Duration::from_secs(60);

const ARCHIVER_SQL: &str = "SELECT archived_count, failed_count, \
     COALESCE(EXTRACT(EPOCH FROM last_archived_time), 0), COALESCE(EXTRACT(EPOCH FROM last_failed_time), 0) \
     FROM pg_stat_archiver";

/// Reads every cluster's archiver status until `stop`; idle while `[backup]` is absent or
/// `archiver_interval` is 0.
pub async fn watch(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut failing = std::collections::HashSet::new();
    loop {
        let rt = shared.runtime.load_full();
        let interval = rt.config.backup.as_ref().and_then(|b| b.archiver_interval.enabled());
        if interval.is_some() {
            for cluster in &rt.clusters {
                match tokio::time::timeout(READ_TIMEOUT, read(&rt, cluster)).await {
                    Ok(Ok(s)) => {
                        failing.remove(&cluster.name);
                        shared.backup.set_archiver(&cluster.name, s);
                    }
                    Ok(Err(e)) => warn_once(&mut failing, &cluster.name, &e),
                    Err(_) => warn_once(&mut failing, &cluster.name, "no answer within 5s"),
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(interval.unwrap_or(IDLE)) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// One WARN when reads of a cluster start failing, not one per interval.
fn warn_once(failing: &mut std::collections::HashSet<String>, cluster: &str, why: &str) {
    if failing.insert(cluster.to_string()) {
        tracing::warn!(%cluster, "cannot read pg_stat_archiver on the primary: {why}");
    }
}

/// Logs in to the cluster's primary as `[backup] user` and reads `pg_stat_archiver`.
async fn read(rt: &Runtime, cluster: &Cluster) -> Result<ArchiverStatus, String> {
    let b = rt.config.backup.as_ref().ok_or("backups are not configured")?;
    let user = rt.users.get(&b.user).ok_or("[backup] user is not a configured user")?;
    let spec = LoginSpec {
        address: cluster.primary.address.clone(),
        backend_name: cluster.primary.name.clone(),
        user,
        database: rt.config.routing.health_check_database.clone(),
        connect_timeout: READ_TIMEOUT,
        tls: rt.server_tls.clone(),
    };
    let mut conn = ServerConn::connect(&spec, 0, 0).await.map_err(|e| e.to_string())?;
    let row = conn.query_row(ARCHIVER_SQL).await.map_err(|e| e.to_string());
    conn.close();
    parse(&row?)
}

fn parse(row: &[Option<String>]) -> Result<ArchiverStatus, String> {
    let field = |i: usize| row.get(i).and_then(|v| v.as_deref()).ok_or("pg_stat_archiver returned no row");
    let num = |i: usize| -> Result<f64, String> { field(i)?.parse().map_err(|_| "not a number".to_string()) };
    Ok(ArchiverStatus {
        archived: num(0)? as u64,
        failed: num(1)? as u64,
        last_archived_s: num(2)?,
        last_failed_s: num(3)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_becomes_a_status() {
        let row = ["12", "1", "1796612645.678", "0"].map(|s| Some(s.to_string()));
        let s = parse(&row).unwrap();
        assert_eq!((s.archived, s.failed, s.last_failed_s), (12, 1, 0.0));
        assert!((s.last_archived_s - 1_796_612_645.678).abs() < 1e-6);
        assert!(parse(&[]).is_err());
    }
}
