//! Role discovery: which of the configured nodes is the primary, from what each reports to its
//! health probe (`pg_is_in_recovery()` and the timeline it writes on). When the primary stops
//! answering or goes into recovery and exactly one other node is out of recovery on the highest
//! timeline, that node becomes the primary (a runtime swap, as a reload does) and clients waiting
//! for a primary resume. A node out of recovery below the highest timeline a primary was seen on
//! (a demoted primary never rewound) never becomes the primary again. Two nodes out of recovery on the same highest timeline is a split brain:
//! pgshift picks neither, and says so on `/ready`, `/stats` and in the log.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

use std::collections::HashMap;

use crate::config::{BackendConfig, Config, DEFAULT_CLUSTER};
use crate::pool::cluster::{now_ms, Backend, Cluster, TopologyState};
use crate::shared::{Runtime, Shared};

/// What one node reported, as discovery needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeView {
    /// Answered its last probe.
    pub up: bool,
    /// Reported `pg_is_in_recovery()`.
    pub in_recovery: bool,
    /// The timeline it writes on (out of recovery only).
    pub timeline: u64,
}

/// Discovery's decision over the nodes, the current primary first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// The current primary stays.
    Keep,
    /// Node `i` (an index into the list) is the primary now.
    Switch(usize),
    /// No node is out of recovery and answering.
    NoPrimary,
    /// Several nodes are out of recovery on the same highest timeline.
    SplitBrain,
}

/// Picks the primary: the one answering node out of recovery on the highest timeline, and not
/// below `floor`, the highest timeline a primary of the cluster was seen on (a node out of
/// recovery below it is a demoted primary that was never rewound: its history has diverged).
pub fn decide(nodes: &[NodeView], floor: u64) -> Decision {
    let writable = || nodes.iter().enumerate().filter(|(_, n)| n.up && !n.in_recovery);
    let Some(top) = writable().map(|(_, n)| n.timeline).max() else {
        return Decision::NoPrimary;
    };
    if top < floor {
        return Decision::NoPrimary;
    }
    let mut best = writable().filter(|(_, n)| n.timeline == top);
    match (best.next(), best.next()) {
        (Some((0, _)), None) => Decision::Keep,
        (Some((i, _)), None) => Decision::Switch(i),
        _ => Decision::SplitBrain,
    }
}

fn view(b: &Backend) -> NodeView {
    let h = &b.health;
    NodeView {
        up: h.probed.load(Ordering::Relaxed) && h.up.load(Ordering::Relaxed),
        in_recovery: h.in_recovery.load(Ordering::Relaxed),
        timeline: h.timeline.load(Ordering::Relaxed),
    }
}

/// Watches the probes' results every `health_check_interval` and follows each cluster's
/// primary, until `stop`.
pub async fn watch(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut lost_at: HashMap<String, u64> = HashMap::new();
    loop {
        let rt = shared.runtime.load_full();
        let mut interval = rt.config.routing.health_check_interval.0.max(Duration::from_millis(10));
        if rt.config.routing.role_discovery {
            for cluster in &rt.clusters {
                let mut lost = lost_at.get(&cluster.name).copied();
                if step(&shared, &rt, cluster, &mut lost) {
                    break; // the runtime changed: look at the new one next time
                }
                match lost {
                    Some(t) => lost_at.insert(cluster.name.clone(), t),
                    None => lost_at.remove(&cluster.name),
                };
            }
        } else {
            // Discovery turned off by a reload: a cluster still discovering has its roles as declared.
            for c in rt.clusters.iter().filter(|c| c.failovers.state() == TopologyState::Discovering) {
                c.failovers.set_state(TopologyState::Primary);
            }
        }
        // A cluster still waiting for its first probes is looked at again soon: writes wait on it.
        if rt.clusters.iter().any(|c| c.failovers.state() == TopologyState::Discovering) {
            interval = interval.min(Duration::from_millis(10));
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// One look at a cluster's nodes; `lost_at` remembers when the primary was first seen gone.
/// True if it switched the primary (the runtime was replaced).
fn step(shared: &Arc<Shared>, rt: &Runtime, cluster: &Cluster, lost_at: &mut Option<u64>) -> bool {
    let nodes: Vec<&Arc<Backend>> = cluster.nodes().collect();
    let views: Vec<NodeView> = nodes.iter().map(|b| view(b)).collect();
    // Before every node has been probed once, a missing answer is no evidence: the state stays
    // (discovering after a start, the switch's primary after a failover).
    if nodes.iter().any(|b| !b.health.probed.load(Ordering::Relaxed)) {
        *lost_at = None;
        return false;
    }
    // When no node answers at all (every probe fails, or probes cannot log in), discovery is
    // blind: clients go on to the primary as configured and see its own errors.
    if views.iter().all(|v| !v.up) {
        *lost_at = None;
        cluster.failovers.set_state(TopologyState::Primary);
        return false;
    }
    let f = &cluster.failovers;
    let before = f.state();
    match decide(&views, f.timeline.load(Ordering::Relaxed)) {
        Decision::Keep => {
            *lost_at = None;
            f.timeline.fetch_max(views[0].timeline, Ordering::Relaxed);
            f.set_state(TopologyState::Primary);
        }
        Decision::NoPrimary => {
            lost_at.get_or_insert_with(now_ms);
            f.set_state(TopologyState::NoPrimary);
            if before != TopologyState::NoPrimary {
                tracing::warn!(cluster = %cluster.name, "no node answers out of recovery on the highest timeline seen: writes wait for a primary");
            }
        }
        Decision::SplitBrain => {
            lost_at.get_or_insert_with(now_ms);
            f.set_state(TopologyState::SplitBrain);
            if before != TopologyState::SplitBrain {
                tracing::error!(
                    cluster = %cluster.name,
                    "split brain: several nodes are out of recovery on the same timeline; pgshift sends writes to none of them"
                );
            }
        }
        Decision::Switch(i) => {
            let switched = switch(shared, rt, cluster, nodes[i], lost_at.take());
            if !switched && before == TopologyState::Discovering {
                // The switch failed (logged): writes go to the primary as configured, as before
                // discovery, rather than wait for one for ever.
                f.set_state(TopologyState::Primary);
            }
            return switched;
        }
    }
    false
}

/// Makes `to` its cluster's primary (and every other node a replica) by swapping in a new runtime.
fn switch(shared: &Arc<Shared>, rt: &Runtime, cluster: &Cluster, to: &Backend, lost_at: Option<u64>) -> bool {
    let mut config = (*rt.config).clone();
    if !promote_in_config(&mut config, &cluster.name, &to.address) {
        return false;
    }
    let from = cluster.primary.address.clone();
    if let Err(problems) = crate::proxy::swap_runtime(shared, config) {
        tracing::error!(cluster = %cluster.name, "failover to {} failed: {}", to.name, problems.join("; "));
        return false;
    }
    let f = &cluster.failovers;
    f.timeline.fetch_max(to.health.timeline.load(Ordering::Relaxed), Ordering::Relaxed);
    let now = now_ms();
    f.count.fetch_add(1, Ordering::Relaxed);
    f.last_at_ms.store(now, Ordering::Relaxed);
    f.last_duration_ms.store(lost_at.map_or(0, |t| now.saturating_sub(t)), Ordering::Relaxed);
    f.set_state(TopologyState::Primary);
    f.changed.notify_waiters();
    tracing::warn!(
        cluster = %cluster.name,
        old = %from,
        new = %to.address,
        timeline = to.health.timeline.load(Ordering::Relaxed),
        "failover: the primary is now the node that was {}",
        to.name
    );
    true
}

/// Puts the node at `address` first in its cluster's configuration (the primary's place); false
/// if the cluster does not list it (or, in the `default` cluster, it is already the primary).
pub fn promote_in_config(config: &mut Config, cluster: &str, address: &str) -> bool {
    if cluster == DEFAULT_CLUSTER {
        let Some(i) = config.replicas.iter().position(|r| r.address() == address) else {
            return false;
        };
        std::mem::swap(&mut config.primary, &mut config.replicas[i]);
        return true;
    }
    let Some(hosts) = config.cluster_hosts(cluster) else { return false };
    let Some(i) = hosts.iter().position(|h| h.address() == address) else { return false };
    let mut order = hosts;
    let promoted = order.remove(i);
    order.insert(0, promoted);
    let spelled = |h: &BackendConfig| {
        if h.host.contains(':') {
            format!("[{}]:{}", h.host, h.port)
        } else {
            h.address()
        }
    };
    match config.clusters.get_mut(cluster) {
        Some(c) => {
            c.hosts = order.iter().map(spelled).collect();
            true
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(up: bool, in_recovery: bool, timeline: u64) -> NodeView {
        NodeView { up, in_recovery, timeline }
    }

    #[test]
    fn picks_the_one_writable_node_on_the_highest_timeline() {
        assert_eq!(decide(&[n(true, false, 1), n(true, true, 0)], 0), Decision::Keep);
        assert_eq!(decide(&[n(false, false, 1), n(true, false, 2)], 0), Decision::Switch(1));
        assert_eq!(decide(&[n(true, true, 0), n(true, false, 2)], 0), Decision::Switch(1));
        // the old primary came back on its old timeline: the promoted node stays
        assert_eq!(decide(&[n(true, false, 2), n(true, false, 1)], 0), Decision::Keep);
        assert_eq!(decide(&[n(true, false, 1), n(true, false, 2)], 0), Decision::Switch(1));
        assert_eq!(decide(&[n(false, false, 1), n(true, true, 0)], 0), Decision::NoPrimary);
        assert_eq!(decide(&[n(true, false, 3), n(true, false, 3)], 0), Decision::SplitBrain);
        assert_eq!(decide(&[n(false, false, 3), n(true, false, 2), n(true, false, 2)], 0), Decision::SplitBrain);
    }

    #[test]
    fn an_old_primary_below_the_timeline_seen_never_comes_back() {
        // the promoted primary (timeline 2) died; the old one is out of recovery on timeline 1
        assert_eq!(decide(&[n(false, false, 2), n(true, false, 1)], 2), Decision::NoPrimary);
        assert_eq!(decide(&[n(false, false, 2), n(true, false, 1), n(true, false, 3)], 2), Decision::Switch(2));
        assert_eq!(decide(&[n(true, false, 2), n(true, true, 0)], 2), Decision::Keep);
    }
}
