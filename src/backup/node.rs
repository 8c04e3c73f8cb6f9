//! Which node a database is dumped from: the least-lagged replica that pgshift's own probes say
//! may serve reads; the primary only when none may and `allow_primary` is set.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::BackupError;
use crate::pool::cluster::Cluster;
use crate::pool::Backend;
use crate::shared::Runtime;

/// At start nothing has been probed yet; a backup waits this long for the first probes.
const FIRST_PROBE_WAIT: Duration = Duration::from_secs(10);

/// The node to dump `cluster`'s databases from, once every node has been probed (or after
/// [`FIRST_PROBE_WAIT`]).
pub async fn choose(rt: &Runtime, cluster: &Cluster, allow_primary: bool) -> Result<Arc<Backend>, BackupError> {
    let since = Instant::now();
    while cluster.nodes().any(|b| !b.health.probed.load(Ordering::Relaxed)) && since.elapsed() < FIRST_PROBE_WAIT {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    pick(rt, cluster, allow_primary).map_err(BackupError::NoNode)
}

/// The choice itself, from the probes' last results.
pub fn pick(rt: &Runtime, cluster: &Cluster, allow_primary: bool) -> Result<Arc<Backend>, String> {
    let lag = |b: &Backend| (b.health.lag_bytes.load(Ordering::Relaxed), b.health.lag_ms.load(Ordering::Relaxed));
    let best = cluster.replicas.iter().filter(|b| b.serves_reads(rt)).min_by_key(|b| lag(b));
    if let Some(b) = best {
        return Ok(b.clone());
    }
    let why = if cluster.replicas.is_empty() {
        format!("cluster {} has no replica", cluster.name)
    } else {
        let each: Vec<String> = cluster.replicas.iter().map(|b| format!("{}: {}", b.name, state(rt, b))).collect();
        format!("no replica of cluster {} is usable ({})", cluster.name, each.join(", "))
    };
    if !allow_primary {
        return Err(format!("{why}, and [backup] allow_primary is false: the primary is not loaded with a dump"));
    }
    let p = &cluster.primary;
    if p.health.up.load(Ordering::Relaxed) && !p.is_banned() {
        Ok(p.clone())
    } else {
        Err(format!("{why}, and the primary is not answering either"))
    }
}

/// Why a replica may not serve a dump, in a few words.
fn state(rt: &Runtime, b: &Backend) -> String {
    let h = &b.health;
    let r = &rt.config.routing;
    if !h.probed.load(Ordering::Relaxed) {
        "not probed yet".into()
    } else if !h.up.load(Ordering::Relaxed) || b.is_banned() {
        "down".into()
    } else if !h.in_recovery.load(Ordering::Relaxed) {
        "not in recovery".into()
    } else {
        let lag_ms = h.lag_ms.load(Ordering::Relaxed);
        let bytes = h.lag_bytes.load(Ordering::Relaxed);
        format!(
            "lag {:.1}s / {bytes} bytes beyond max_replica_lag {} / max_replica_lag_bytes {}",
            lag_ms as f64 / 1e3,
            r.max_replica_lag,
            r.max_replica_lag_bytes
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn runtime() -> Runtime {
        let text = "[[auth.users]]\nname = \"app\"\npassword = \"app\"\n[primary]\nport = 5000\n\
                    [[replicas]]\nport = 5001\n[[replicas]]\nport = 5002\n";
        Runtime::build(Config::from_toml(text).unwrap(), None).unwrap()
    }

    fn probed(b: &Backend, up: bool, in_recovery: bool, lag_bytes: u64) {
        let h = &b.health;
        h.probed.store(true, Ordering::Relaxed);
        h.up.store(up, Ordering::Relaxed);
        h.in_recovery.store(in_recovery, Ordering::Relaxed);
        h.lag_bytes.store(lag_bytes, Ordering::Relaxed);
    }

    #[test]
    fn the_least_lagged_usable_replica_wins_and_the_primary_only_when_allowed() {
        let rt = runtime();
        let c = rt.clusters[0].clone();
        probed(&c.primary, true, false, 0);
        probed(&c.replicas[0], true, true, 500);
        probed(&c.replicas[1], true, true, 20);
        assert_eq!(pick(&rt, &c, false).unwrap().name, "replica1");
        c.replicas[1].ban(Duration::from_secs(30), "test");
        assert_eq!(pick(&rt, &c, false).unwrap().name, "replica0");
        probed(&c.replicas[0], false, true, 0);
        let e = pick(&rt, &c, false).unwrap_err();
        assert!(e.contains("replica0: down") && e.contains("allow_primary is false"), "{e}");
        assert_eq!(pick(&rt, &c, true).unwrap().name, "primary");
        probed(&c.primary, false, false, 0);
        assert!(pick(&rt, &c, true).unwrap_err().contains("primary is not answering"));
    }
}
