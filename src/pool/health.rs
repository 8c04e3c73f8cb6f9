//! Backend probes: one task per backend keeps a connection of its own and asks, every
//! `health_check_interval`, whether the server is up, in recovery, where its WAL is, and how far
//! a replica lags. A failed, refused or slow probe bans the backend until a probe succeeds.
//!
//! The same samples serve read-your-writes: a primary WAL position read by a probe sent after a
//! client's commit is at or beyond that commit, so a replica that has replayed it is safe to read.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

use super::cluster::{mono_ms, parse_lsn, Backend, Role};
use crate::server::{LoginSpec, ServerConn};
use crate::shared::{Runtime, Shared};

/// One query for every backend: recovery state, WAL position (insert position on a primary, so
/// it covers commits not yet flushed; replay position on a replica), replay lag in seconds, the
/// primary's timeline, and whether a replica streams (a WAL receiver runs and, where the probe's
/// role may see it, is streaming). The lag is 0 when the replica streams and has replayed
/// everything it received; otherwise the age of the last commit it replayed, which [`record`]
/// bounds for a streaming replica by the time since a probe last saw it caught up: on a quiet
/// primary the last commit may be old while a record without a commit (a checkpoint's, the
/// standby snapshot's) is being replayed. A replica whose WAL receiver is gone has replayed all
/// it received too, yet falls further behind with every commit on the primary: it must not read
/// as caught up.
const PROBE_SQL: &str = "SELECT pg_is_in_recovery(), \
     CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_insert_lsn() END, \
     CASE WHEN NOT pg_is_in_recovery() THEN 0 \
          WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() AND EXISTS \
               (SELECT 1 FROM pg_stat_wal_receiver WHERE COALESCE(status, 'streaming') = 'streaming') THEN 0 \
          ELSE COALESCE(EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp()), 0) END, \
     CASE WHEN pg_is_in_recovery() THEN NULL ELSE substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8) END, \
     pg_is_in_recovery() AND EXISTS \
          (SELECT 1 FROM pg_stat_wal_receiver WHERE COALESCE(status, 'streaming') = 'streaming')";

/// Starts a probe task for every backend of the runtime that has none yet.
pub fn spawn_probes(shared: &Arc<Shared>, stop: &watch::Receiver<bool>) {
    let rt = shared.runtime.load_full();
    for b in rt.backends() {
        if !b.health.probing.swap(true, Ordering::Relaxed) {
            tokio::spawn(probe_loop(shared.clone(), b.clone(), stop.clone()));
        }
    }
}

/// [`spawn_probes`] with the proxy's own stop signal (after a reload).
pub fn spawn_probes_shared(shared: &Arc<Shared>) {
    spawn_probes(shared, &shared.stop.subscribe());
}

fn in_runtime(rt: &Runtime, b: &Arc<Backend>) -> bool {
    rt.backends().any(|x| Arc::ptr_eq(x, b))
}

async fn probe_loop(shared: Arc<Shared>, backend: Arc<Backend>, mut stop: watch::Receiver<bool>) {
    let mut conn: Option<ServerConn> = None;
    loop {
        let rt = shared.runtime.load_full();
        if !in_runtime(&rt, &backend) {
            break; // removed by a reload
        }
        let r = &rt.config.routing;
        let timeout = r.health_check_timeout.0.max(Duration::from_millis(50));
        let sent_at = mono_ms();
        let result = tokio::time::timeout(timeout, probe(&rt, &backend, &mut conn)).await;
        match result {
            Ok(Ok(row)) => record(&rt, &backend, &row, sent_at),
            Ok(Err(why)) => fail(&backend, r.ban_time.0, &why, &mut conn),
            Err(_) => fail(&backend, r.ban_time.0, "probe timed out", &mut conn),
        }
        tokio::select! {
            _ = tokio::time::sleep(r.health_check_interval.0.max(Duration::from_millis(10))) => {}
            _ = stop.wait_for(|s| *s) => break,
        }
    }
    backend.health.probing.store(false, Ordering::Relaxed);
}

/// One probe. A failure on the connection kept from the last probe is tried once more on a new
/// one: a client logged in as the probe's role can end that backend (`pg_terminate_backend`),
/// and so can `idle_session_timeout`; only a fresh connection speaks for the node.
async fn probe(rt: &Runtime, backend: &Backend, conn: &mut Option<ServerConn>) -> Result<Vec<Option<String>>, String> {
    let kept = conn.is_some();
    match probe_once(rt, backend, conn).await {
        Err(_) if kept => {
            *conn = None;
            probe_once(rt, backend, conn).await
        }
        answer => answer,
    }
}

async fn probe_once(
    rt: &Runtime,
    backend: &Backend,
    conn: &mut Option<ServerConn>,
) -> Result<Vec<Option<String>>, String> {
    if conn.is_none() {
        let spec = probe_spec(rt, backend).ok_or("no configured user can log in for health probes")?;
        *conn = Some(ServerConn::connect(&spec, 0, 0).await.map_err(|e| e.to_string())?);
    }
    let c = conn.as_mut().ok_or("no probe connection")?;
    c.query_row(PROBE_SQL).await.map_err(|e| e.to_string())
}

/// The login for probes: `health_check_user`, or the first user we can log in as.
fn probe_spec(rt: &Runtime, backend: &Backend) -> Option<LoginSpec> {
    let r = &rt.config.routing;
    let user = if r.health_check_user.is_empty() {
        rt.config.auth.users.iter().filter_map(|u| rt.users.get(&u.name)).find(|u| u.has_backend_secret())?
    } else {
        rt.users.get(&r.health_check_user)?
    };
    Some(LoginSpec {
        address: backend.address.clone(),
        backend_name: backend.name.clone(),
        user,
        database: r.health_check_database.clone(),
        connect_timeout: r.health_check_timeout.0,
        tls: rt.server_tls.clone(),
    })
}

fn record(rt: &Runtime, backend: &Backend, row: &[Option<String>], sent_at: u64) {
    let h = &backend.health;
    let text = |i: usize| row.get(i).and_then(|v| v.as_deref());
    let in_recovery = text(0) == Some("t");
    h.in_recovery.store(in_recovery, Ordering::Relaxed);
    if let Some(lsn) = text(1).and_then(parse_lsn) {
        h.lsn.store(lsn, Ordering::Relaxed);
        h.lsn_sampled_at.store(sent_at, Ordering::Relaxed);
        if matches!(backend.role, Role::Replica | Role::TargetReplica) {
            let primary = match rt.cluster_of(backend) {
                Some(c) => &c.primary,
                None => rt.targets.first().unwrap_or(&rt.primary),
            };
            let primary = primary.health.lsn.load(Ordering::Relaxed);
            h.lag_bytes.store(primary.saturating_sub(lsn), Ordering::Relaxed);
        }
    }
    let timeline = text(3).and_then(|t| u64::from_str_radix(t, 16).ok()).unwrap_or(0);
    h.timeline.store(timeline, Ordering::Relaxed);
    let lag_s: f64 = text(2).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    h.lag_ms.store(replay_lag_ms(h, lag_s, text(4) == Some("t"), sent_at), Ordering::Relaxed);
    let was_up = h.up.swap(true, Ordering::Relaxed);
    h.probed.store(true, Ordering::Relaxed);
    if backend.is_banned() || !was_up {
        tracing::info!(backend = %backend.name, "backend is up");
    }
    backend.unban();
}

/// A replica's lag from its probe's answer: `lag_s` as reported, but for a streaming replica no
/// more than the time since a probe last found it caught up (its data is at most that stale).
fn replay_lag_ms(h: &super::cluster::Health, lag_s: f64, streaming: bool, sent_at: u64) -> u64 {
    let reported = (lag_s.max(0.0) * 1000.0) as u64;
    if !streaming {
        return reported;
    }
    if reported == 0 {
        h.caught_up_at.store(sent_at, Ordering::Relaxed);
        return 0;
    }
    match h.caught_up_at.load(Ordering::Relaxed) {
        0 => reported,
        at => reported.min(sent_at.saturating_sub(at)),
    }
}

fn fail(backend: &Backend, ban: Duration, why: &str, conn: &mut Option<ServerConn>) {
    *conn = None;
    let h = &backend.health;
    h.probed.store(true, Ordering::Relaxed);
    if h.up.swap(false, Ordering::Relaxed) || !backend.is_banned() {
        tracing::warn!(backend = %backend.name, "backend probe failed, banned: {why}");
    }
    backend.ban(ban, why);
}

impl Backend {
    /// May serve reads now: probed up, not banned, a replica still in recovery, and within the
    /// lag limits.
    pub fn serves_reads(&self, rt: &Runtime) -> bool {
        let h = &self.health;
        let r = &rt.config.routing;
        h.probed.load(Ordering::Relaxed)
            && h.up.load(Ordering::Relaxed)
            && !self.is_banned()
            && h.in_recovery.load(Ordering::Relaxed)
            && h.lag_ms.load(Ordering::Relaxed) <= r.max_replica_lag.0.as_millis() as u64
            && (r.max_replica_lag_bytes == 0 || h.lag_bytes.load(Ordering::Relaxed) <= r.max_replica_lag_bytes)
    }

    /// True once this replica has replayed WAL up to `lsn`.
    pub fn replayed(&self, lsn: u64) -> bool {
        self.health.lsn.load(Ordering::Relaxed) >= lsn
    }
}
