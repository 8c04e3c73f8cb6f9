//! One read of the proxy's numbers (pools, backends, clients, traffic, latency) shared by
//! `/stats`, `/metrics` and the console, so all three always agree.
//!
//! PgBouncer keys a pool by (database, user); pgshift keeps one pool per backend under that, so a
//! [`PoolGroup`] sums its backends' pools and lists them in `backends`. Client counts come from
//! the session registry (it knows each client's state), server counts from `Pool::snapshot`.

use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::client::registry::ClientState;
use crate::pool::{Backend, Pool, PoolSnapshot, Role};
use crate::shared::{Runtime, Shared};
use crate::stats::{MergedStats, TrafficTotals, KIND_LABELS};

/// One pool (a backend's share of a PoolGroup).
#[derive(Debug, Serialize)]
pub struct PoolOnBackend {
    /// Backend name ("primary", "replica0", ...), or its address if it left the configuration.
    pub backend: String,
    /// `host:port` (the admin port may show addresses; client errors never do).
    pub address: String,
    /// Server connection counts and the oldest waiter's age.
    #[serde(flatten)]
    pub sizes: PoolSnapshot,
    /// Traffic through this pool.
    pub traffic: TrafficTotals,
    /// Server connections opened.
    pub connects: u64,
    /// Failed attempts to open one.
    pub connect_errors: u64,
    /// Times the reserve pool was used.
    pub reserve_used: u64,
    /// Server sessions reset after a transaction not proven free of session effects.
    pub resets: u64,
    /// Server connections held from other clients until a cancel toward them finished.
    pub cancel_holds: u64,
    /// Cancel requests dropped: the client had no query running on a server.
    pub cancels_dropped: u64,
}

/// A (database, user) pool as PgBouncer shows it, summed over backends.
#[derive(Debug, Serialize)]
pub struct PoolGroup {
    /// Database name.
    pub database: String,
    /// Role name.
    pub user: String,
    /// Clients between transactions or holding a server (PgBouncer's cl_active).
    pub cl_active: usize,
    /// Clients waiting for a server connection.
    pub cl_waiting: usize,
    /// Server connections leased to clients.
    pub sv_active: usize,
    /// Idle server connections.
    pub sv_idle: usize,
    /// Always 0: pgshift checks long-idle connections at checkout instead of parking them in a
    /// separate "used" list, so they count as sv_idle.
    pub sv_used: usize,
    /// Server connections being opened.
    pub sv_login: usize,
    /// Seconds the oldest waiting client has waited (max over backends).
    pub maxwait: f64,
    /// Server sessions reset (summed over backends).
    pub resets: u64,
    /// Server connections held until a cancel finished (summed over backends).
    pub cancel_holds: u64,
    /// Cancel requests dropped for want of a running query (summed over backends).
    pub cancels_dropped: u64,
    /// Traffic summed over backends.
    pub traffic: TrafficTotals,
    /// Per-backend detail.
    pub backends: Vec<PoolOnBackend>,
}

/// A backend and its health.
#[derive(Debug, Serialize)]
pub struct BackendView {
    /// "primary", "replica0", ...
    pub name: String,
    /// primary | replica | target_primary | target_replica.
    pub role: Role,
    /// `host:port`.
    pub address: String,
    /// banned | down | lagging | up | unprobed.
    pub health: &'static str,
    /// True while banned after a failed connection or probe.
    pub banned: bool,
    /// Replay lag from the last probe (replicas), ms.
    pub lag_ms: u64,
    /// Why the last probe or connection failed.
    pub last_error: Option<String>,
    /// Requests routed here.
    pub routed: u64,
}

/// Latency summary of one histogram, in seconds.
#[derive(Debug, Serialize, Clone, Copy)]
pub struct Latency {
    /// Samples.
    pub count: u64,
    /// Mean.
    pub mean: f64,
    /// Median.
    pub p50: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest sample.
    pub max: f64,
}

impl Latency {
    /// Summarises a histogram of microseconds.
    pub fn of(h: &Histogram<u64>) -> Latency {
        let s = |us: u64| us as f64 / 1e6;
        Latency {
            count: h.len(),
            mean: h.mean() / 1e6,
            p50: s(h.value_at_quantile(0.5)),
            p95: s(h.value_at_quantile(0.95)),
            p99: s(h.value_at_quantile(0.99)),
            max: s(h.max()),
        }
    }
}

/// Latency of transactions, requests by kind, and pool waits.
#[derive(Debug, Serialize)]
pub struct Latencies {
    /// Whole transactions (lease to release).
    pub transaction: Latency,
    /// Requests, by the kind of their first statement.
    pub query: BTreeMap<&'static str, Latency>,
    /// Waits for a server connection.
    pub pool_wait: Latency,
}

/// Everything `/stats` shows.
#[derive(Debug, Serialize)]
pub struct StatsView {
    /// True while PAUSE holds new transactions.
    pub paused: bool,
    /// Logged-in clients now.
    pub clients: u64,
    /// Open client sockets, logged in or not.
    pub client_sockets: usize,
    /// Sockets still logging in, against `max_pending_logins`.
    pub pending_logins: usize,
    /// Logins since start.
    pub logins: u64,
    /// Refused logins since start.
    pub login_failures: u64,
    /// Clients handed over by the process this one upgraded (binary upgrade, SIGUSR2).
    pub clients_adopted: u64,
    /// Times RECONNECT was issued.
    pub reconnects: u64,
    /// Pools by (database, user).
    pub pools: Vec<PoolGroup>,
    /// Backends and their health.
    pub backends: Vec<BackendView>,
    /// Traffic summed over all pools.
    pub totals: TrafficTotals,
    /// Errors sent to clients by SQLSTATE class.
    pub errors: BTreeMap<String, u64>,
    /// Latency percentiles.
    pub latency: Latencies,
    /// Sessions pinned to their server, by reason.
    pub pins: BTreeMap<&'static str, u64>,
    /// Role discovery: current state and failovers.
    pub topology: TopologyView,
}

/// Role discovery as the admin port shows it: the `default` cluster's state at the top, every
/// cluster in `clusters`.
#[derive(Debug, Serialize)]
pub struct TopologyView {
    /// primary | no_primary | split_brain | discovering.
    pub state: crate::pool::cluster::TopologyState,
    /// Primary changes made by role discovery.
    pub failovers: u64,
    /// Unix ms of the last one (0: none).
    pub last_failover_at_ms: u64,
    /// How long the last one took, from the primary's loss to the switch (ms).
    pub last_failover_ms: u64,
    /// Every cluster, `default` first.
    pub clusters: Vec<ClusterView>,
}

/// One cluster: its role discovery state, failovers and nodes.
#[derive(Debug, Serialize)]
pub struct ClusterView {
    /// `default` or the `[clusters]` key.
    pub name: String,
    /// primary | no_primary | split_brain | discovering.
    pub state: crate::pool::cluster::TopologyState,
    /// Primary changes made by role discovery.
    pub failovers: u64,
    /// Unix ms of the last one (0: none).
    pub last_failover_at_ms: u64,
    /// How long the last one took (ms).
    pub last_failover_ms: u64,
    /// The node writes go to.
    pub primary: String,
    /// Its nodes with what they last reported.
    pub nodes: Vec<NodeView>,
}

/// A node as its probe saw it.
#[derive(Debug, Serialize)]
pub struct NodeView {
    /// Backend name.
    pub name: String,
    /// `host:port`.
    pub address: String,
    /// What the node reports: primary (out of recovery), replica (in recovery), or unknown.
    pub reports: &'static str,
    /// The timeline it writes on (out of recovery; 0 otherwise).
    pub timeline: u64,
    /// Replay lag (replicas), ms.
    pub lag_ms: u64,
    /// WAL bytes behind the cluster's primary (replicas).
    pub lag_bytes: u64,
    /// Answered its last probe.
    pub up: bool,
}

/// The topology part of `/stats`.
pub fn topology(shared: &Shared) -> TopologyView {
    let rt = shared.runtime.load_full();
    let clusters: Vec<ClusterView> = rt.clusters.iter().map(|c| cluster_view(c)).collect();
    let first = clusters.first();
    TopologyView {
        state: first.map_or(Default::default(), |c| c.state),
        failovers: first.map_or(0, |c| c.failovers),
        last_failover_at_ms: first.map_or(0, |c| c.last_failover_at_ms),
        last_failover_ms: first.map_or(0, |c| c.last_failover_ms),
        clusters,
    }
}

fn cluster_view(c: &crate::pool::cluster::Cluster) -> ClusterView {
    let f = &c.failovers;
    let nodes = c
        .nodes()
        .map(|b| {
            let h = &b.health;
            let probed = h.probed.load(Ordering::Relaxed);
            let up = probed && h.up.load(Ordering::Relaxed);
            let reports = match (up, h.in_recovery.load(Ordering::Relaxed)) {
                (false, _) => "unknown",
                (true, true) => "replica",
                (true, false) => "primary",
            };
            NodeView {
                name: b.name.clone(),
                address: b.address.clone(),
                reports,
                timeline: h.timeline.load(Ordering::Relaxed),
                lag_ms: h.lag_ms.load(Ordering::Relaxed),
                lag_bytes: h.lag_bytes.load(Ordering::Relaxed),
                up,
            }
        })
        .collect();
    ClusterView {
        name: c.name.clone(),
        state: f.state(),
        failovers: f.count.load(Ordering::Relaxed),
        last_failover_at_ms: f.last_at_ms.load(Ordering::Relaxed),
        last_failover_ms: f.last_duration_ms.load(Ordering::Relaxed),
        primary: c.primary.name.clone(),
        nodes,
    }
}

/// The backend a pool talks to, by address.
fn backend_of<'a>(rt: &'a Runtime, address: &str) -> Option<&'a Arc<Backend>> {
    rt.backends().find(|b| b.address == address)
}

/// Client counts (cl_active, cl_waiting) by (database, user).
fn client_counts(shared: &Shared) -> BTreeMap<(String, String), (usize, usize)> {
    let mut m: BTreeMap<(String, String), (usize, usize)> = BTreeMap::new();
    for h in shared.sessions.all() {
        let e = m.entry((h.database.to_string(), h.user.to_string())).or_default();
        match h.state() {
            ClientState::Waiting => e.1 += 1,
            ClientState::Idle | ClientState::Active => e.0 += 1,
        }
    }
    m
}

fn pool_on_backend(rt: &Runtime, pool: &Pool) -> PoolOnBackend {
    let address = pool.spec.load().address.clone();
    PoolOnBackend {
        backend: backend_of(rt, &address).map_or_else(|| address.clone(), |b| b.name.clone()),
        address,
        sizes: pool.snapshot(),
        traffic: pool.stats.totals(),
        connects: pool.stats.connects.load(Ordering::Relaxed),
        connect_errors: pool.stats.connect_errors.load(Ordering::Relaxed),
        reserve_used: pool.stats.reserve_used.load(Ordering::Relaxed),
        resets: pool.stats.resets.load(Ordering::Relaxed),
        cancel_holds: pool.stats.cancel_holds.load(Ordering::Relaxed),
        cancels_dropped: pool.stats.cancels_dropped.load(Ordering::Relaxed),
    }
}

/// Pools grouped by (database, user), sorted; groups with clients but no pool yet included.
pub fn pool_groups(shared: &Shared) -> Vec<PoolGroup> {
    let rt = shared.runtime.load_full();
    let mut groups: BTreeMap<(String, String), Vec<PoolOnBackend>> = BTreeMap::new();
    for (key, pool) in shared.pools.entries() {
        groups.entry((key.name, key.user)).or_default().push(pool_on_backend(&rt, &pool));
    }
    let clients = client_counts(shared);
    for key in clients.keys() {
        groups.entry(key.clone()).or_default();
    }
    groups
        .into_iter()
        .map(|((database, user), mut backends)| {
            backends.sort_by(|a, b| a.backend.cmp(&b.backend));
            let (cl_active, cl_waiting) = clients.get(&(database.clone(), user.clone())).copied().unwrap_or_default();
            let mut g = PoolGroup {
                database,
                user,
                cl_active,
                cl_waiting,
                sv_active: 0,
                sv_idle: 0,
                sv_used: 0,
                sv_login: 0,
                maxwait: 0.0,
                resets: 0,
                cancel_holds: 0,
                cancels_dropped: 0,
                traffic: TrafficTotals::default(),
                backends: Vec::new(),
            };
            for b in &backends {
                g.sv_active += b.sizes.sv_active;
                g.sv_idle += b.sizes.sv_idle;
                g.sv_login += b.sizes.sv_login;
                g.maxwait = g.maxwait.max(b.sizes.maxwait.as_secs_f64());
                g.resets += b.resets;
                g.cancel_holds += b.cancel_holds;
                g.cancels_dropped += b.cancels_dropped;
                g.traffic += &b.traffic;
            }
            g.backends = backends;
            g
        })
        .collect()
}

/// The configured backends with their health.
pub fn backends(shared: &Shared) -> Vec<BackendView> {
    let rt = shared.runtime.load_full();
    let max_lag = rt.config.routing.max_replica_lag.0.as_millis() as u64;
    rt.backends()
        .map(|b| {
            let h = &b.health;
            let lag_ms = h.lag_ms.load(Ordering::Relaxed);
            let probed = h.probed.load(Ordering::Relaxed);
            let health = if b.is_banned() {
                "banned"
            } else if probed && !h.up.load(Ordering::Relaxed) {
                "down"
            } else if b.role == Role::Replica && max_lag > 0 && lag_ms > max_lag {
                "lagging"
            } else if probed {
                "up"
            } else {
                "unprobed"
            };
            BackendView {
                name: b.name.clone(),
                role: b.role,
                address: b.address.clone(),
                health,
                banned: b.is_banned(),
                lag_ms,
                last_error: h.last_error.lock().ok().and_then(|e| e.clone()),
                routed: h.routed.load(Ordering::Relaxed),
            }
        })
        .collect()
}

/// Latency summaries from merged histograms.
pub fn latencies(m: &MergedStats) -> Latencies {
    Latencies {
        transaction: Latency::of(&m.xact),
        query: KIND_LABELS.iter().zip(m.query.iter()).map(|(k, h)| (*k, Latency::of(h))).collect(),
        pool_wait: Latency::of(&m.wait),
    }
}

/// The whole `/stats` document.
pub fn stats(shared: &Shared) -> StatsView {
    stats_with(shared, &shared.stats.merged())
}

/// The `/stats` document from histograms the caller already merged (metrics needs them too).
pub fn stats_with(shared: &Shared, merged: &MergedStats) -> StatsView {
    let pools = pool_groups(shared);
    let mut totals = TrafficTotals::default();
    for g in &pools {
        totals += &g.traffic;
    }
    let s = &shared.stats;
    StatsView {
        paused: *shared.paused.borrow(),
        clients: s.clients.load(Ordering::Relaxed),
        client_sockets: shared.conn_count.get(),
        pending_logins: shared.conn_count.logging_in(),
        logins: s.logins.load(Ordering::Relaxed),
        login_failures: s.login_failures.load(Ordering::Relaxed),
        clients_adopted: s.adopted.load(Ordering::Relaxed),
        reconnects: shared.reconnect_epoch.load(Ordering::Relaxed),
        backends: backends(shared),
        totals,
        latency: latencies(merged),
        errors: merged.errors.clone(),
        pins: s.pins.lock().map(|p| p.clone()).unwrap_or_default(),
        pools,
        topology: topology(shared),
    }
}
