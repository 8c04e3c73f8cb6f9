//! Role discovery: which of the configured nodes is the primary, from what each reports to its
//! health probe (`pg_is_in_recovery()` and the timeline it writes on). When the primary stops
//! answering or goes into recovery and exactly one other node is out of recovery on the highest
//! timeline, that node becomes the primary (a runtime swap, as a reload does) and clients waiting
//! for a primary resume. Two nodes out of recovery on the same highest timeline is a split brain:
//! pgshift picks neither, and says so on `/ready`, `/stats` and in the log.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

use crate::pool::cluster::{now_ms, Backend, TopologyState};
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

/// Picks the primary: the one answering node out of recovery on the highest timeline.
pub fn decide(nodes: &[NodeView]) -> Decision {
    let writable = || nodes.iter().enumerate().filter(|(_, n)| n.up && !n.in_recovery);
    let Some(top) = writable().map(|(_, n)| n.timeline).max() else {
        return Decision::NoPrimary;
    };
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

/// Watches the probes' results every `health_check_interval` and follows the primary, until `stop`.
pub async fn watch(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut lost_at: Option<u64> = None;
    loop {
        let rt = shared.runtime.load_full();
        let interval = rt.config.routing.health_check_interval.0.max(Duration::from_millis(10));
        if rt.config.routing.role_discovery {
            step(&shared, &rt, &mut lost_at);
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// One look at the nodes; `lost_at` remembers when the primary was first seen gone.
fn step(shared: &Arc<Shared>, rt: &Runtime, lost_at: &mut Option<u64>) {
    let nodes: Vec<&Arc<Backend>> = std::iter::once(&rt.primary).chain(rt.replicas.iter()).collect();
    let views: Vec<NodeView> = nodes.iter().map(|b| view(b)).collect();
    // Before every node has been probed once, a missing answer is no evidence; and when no node
    // answers at all (every probe fails, or probes cannot log in), discovery is blind: clients
    // go on to the primary as configured and see its own errors.
    if nodes.iter().any(|b| !b.health.probed.load(Ordering::Relaxed)) || views.iter().all(|v| !v.up) {
        *lost_at = None;
        shared.failovers.set_state(TopologyState::Primary);
        return;
    }
    let f = &shared.failovers;
    let before = f.state();
    match decide(&views) {
        Decision::Keep => {
            *lost_at = None;
            f.set_state(TopologyState::Primary);
        }
        Decision::NoPrimary => {
            lost_at.get_or_insert_with(now_ms);
            f.set_state(TopologyState::NoPrimary);
            if before != TopologyState::NoPrimary {
                tracing::warn!("no node is out of recovery and answering: writes wait for a primary");
            }
        }
        Decision::SplitBrain => {
            lost_at.get_or_insert_with(now_ms);
            f.set_state(TopologyState::SplitBrain);
            if before != TopologyState::SplitBrain {
                tracing::error!(
                    "split brain: several nodes are out of recovery on the same timeline; pgshift sends writes to none of them"
                );
            }
        }
        Decision::Switch(i) => switch(shared, rt, nodes[i], lost_at.take()),
    }
}

/// Makes `to` the primary (and every other node a replica) by swapping in a new runtime.
fn switch(shared: &Arc<Shared>, rt: &Runtime, to: &Backend, lost_at: Option<u64>) {
    let mut config = (*rt.config).clone();
    let Some(i) = config.replicas.iter().position(|r| r.address() == to.address) else {
        return;
    };
    std::mem::swap(&mut config.primary, &mut config.replicas[i]);
    let from = rt.primary.address.clone();
    if let Err(problems) = crate::proxy::reload_with(shared, config) {
        tracing::error!("failover to {} failed: {}", to.name, problems.join("; "));
        return;
    }
    let f = &shared.failovers;
    let now = now_ms();
    f.count.fetch_add(1, Ordering::Relaxed);
    f.last_at_ms.store(now, Ordering::Relaxed);
    f.last_duration_ms.store(lost_at.map_or(0, |t| now.saturating_sub(t)), Ordering::Relaxed);
    f.set_state(TopologyState::Primary);
    f.changed.notify_waiters();
    tracing::warn!(
        old = %from,
        new = %to.address,
        timeline = to.health.timeline.load(Ordering::Relaxed),
        "failover: the primary is now the node that was {}",
        to.name
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(up: bool, in_recovery: bool, timeline: u64) -> NodeView {
        NodeView { up, in_recovery, timeline }
    }

    #[test]
    fn picks_the_one_writable_node_on_the_highest_timeline() {
        assert_eq!(decide(&[n(true, false, 1), n(true, true, 0)]), Decision::Keep);
        assert_eq!(decide(&[n(false, false, 1), n(true, false, 2)]), Decision::Switch(1));
        assert_eq!(decide(&[n(true, true, 0), n(true, false, 2)]), Decision::Switch(1));
        // the old primary came back on its old timeline: the promoted node stays
        assert_eq!(decide(&[n(true, false, 2), n(true, false, 1)]), Decision::Keep);
        assert_eq!(decide(&[n(true, false, 1), n(true, false, 2)]), Decision::Switch(1));
        assert_eq!(decide(&[n(false, false, 1), n(true, true, 0)]), Decision::NoPrimary);
        assert_eq!(decide(&[n(true, false, 3), n(true, false, 3)]), Decision::SplitBrain);
        assert_eq!(decide(&[n(false, false, 3), n(true, false, 2), n(true, false, 2)]), Decision::SplitBrain);
    }
}
