//! A client that needs the primary while there is none (a failover) waits for one instead of
//! failing: bounded by `failover_timeout`, woken as soon as role discovery switches to a promoted
//! node or the primary answers again. Reads keep flowing from replicas meanwhile.

use std::sync::Arc;
use std::time::Duration;

use super::request::Request;
use super::session::Session;
use crate::error::ClientError;
use crate::migration::Phase;
use crate::pool::cluster::TopologyState;
use crate::pool::{Backend, Lease, Role};
use crate::router::Target;

/// The error a request that needs the primary gets while discovery has none.
pub(super) fn no_primary(state: TopologyState) -> ClientError {
    let why = match state {
        TopologyState::SplitBrain => "several nodes claim to be the primary (split brain); pgshift writes to none",
        TopologyState::Discovering => "pgshift has not heard from every node since it started (role discovery)",
        _ => "no primary is answering (failover in progress)",
    };
    ClientError::error("08006", format!("server unavailable: {why}"))
}

/// True if `e` says the primary cannot be reached or is not a primary right now.
fn primary_gone(e: &ClientError) -> bool {
    matches!(e.code.as_str(), "08006" | "57P03" | "25006")
}

impl Session {
    /// [`Session::lease_for`], waiting through a failover when role discovery is on.
    pub(super) async fn lease_through_failover(
        &mut self,
        req: Request,
        phase: Phase,
    ) -> Result<(Lease, Arc<Backend>, Target), ClientError> {
        if !self.rt.config.routing.role_discovery {
            return self.lease_for(req, phase).await;
        }
        let limit = self.rt.config.routing.failover_timeout.0;
        let deadline = tokio::time::Instant::now() + limit;
        let mut asked_discovery = false;
        loop {
            // Only a failover discovery has seen is waited out: with the primary reported fine
            // (or discovery blind), its errors are the client's answer, as before.
            let failovers = self.pools.cluster().failovers.clone();
            let failing_over = || failovers.state() != TopologyState::Primary;
            // The runtime this try routes under is the session's own (attach, or the end of the
            // last turn, just brought it up to date): no load of the shared one per request.
            let seen = (failovers.state(), self.rt.generation);
            let mut e = match self.lease_for(req, phase).await {
                Err(e) if primary_gone(&e) => e,
                other => return other,
            };
            let in_time = tokio::time::Instant::now() < deadline;
            if self.topology_seen() != seen && in_time {
                // Discovery changed its view while this try ran (a switch landing between the
                // route and here): the error may belong to the view before. Try the new one.
            } else if failing_over() && in_time {
                self.wait_for_primary(deadline).await;
            } else if failing_over() {
                e.message = format!("{} (waited failover_timeout = {}s for a primary)", e.message, limit.as_secs());
                return Err(e);
            } else if !asked_discovery {
                // The primary just failed and discovery has not looked yet: give it the time of
                // a probe or two to see it (then this is a failover, and waited out), rather
                // than failing the first transactions after the primary's death.
                asked_discovery = true;
                let seen = self.topology_seen();
                self.wait_for_discovery(deadline).await;
                if !failing_over() && self.topology_seen() == seen {
                    return Err(e);
                }
            } else {
                return Err(e);
            }
            self.follow_runtime()?;
        }
    }

    /// What discovery says now, and under which runtime: a change means a failover moved on.
    fn topology_seen(&self) -> (TopologyState, u64) {
        (self.pools.cluster().failovers.state(), self.shared.runtime.load().generation)
    }

    /// Takes the current runtime and its pools if a swap (a failover's, a reload's) replaced them.
    pub(super) fn follow_runtime(&mut self) -> Result<(), ClientError> {
        let rt = self.shared.runtime.load_full();
        if rt.generation != self.rt.generation {
            self.pools = super::route::SessionPools::resolve(&self.shared, &rt, &self.user, &self.pools.database)?;
            self.rt = rt;
        }
        Ok(())
    }

    /// Waits until discovery says the primary is gone, for at most three probe rounds and never
    /// more than a second (a primary that is fine costs its failing client that much), or
    /// `deadline`.
    async fn wait_for_discovery(&mut self, deadline: tokio::time::Instant) {
        let interval = self.rt.config.routing.health_check_interval.0.max(Duration::from_millis(10));
        let grace = (3 * interval).min(Duration::from_secs(1));
        let until = deadline.min(tokio::time::Instant::now() + grace);
        let f = self.pools.cluster().failovers.clone();
        while tokio::time::Instant::now() < until && f.state() == TopologyState::Primary {
            let changed = f.changed.notified();
            tokio::select! {
                _ = changed => {}
                _ = tokio::time::sleep(interval.min(Duration::from_millis(50))) => {}
            }
        }
    }

    /// Waits until discovery reports a primary again (a switch, or the old one back), or `deadline`.
    async fn wait_for_primary(&mut self, deadline: tokio::time::Instant) {
        let f = self.pools.cluster().failovers.clone();
        let interval = self.rt.config.routing.health_check_interval.0.max(Duration::from_millis(10));
        let generation = self.rt.generation;
        loop {
            let changed = f.changed.notified();
            let mut changed = std::pin::pin!(changed);
            changed.as_mut().enable();
            let rt = self.shared.runtime.load();
            if rt.generation != generation || f.state() == TopologyState::Primary {
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                return;
            }
            let tick =
                tokio::time::sleep(interval.min(deadline.saturating_duration_since(tokio::time::Instant::now())));
            tokio::select! {
                _ = changed => {}
                _ = tick => {}
            }
        }
    }
}

impl Session {
    /// A client that kept its server connection on a primary (session mode, pinned, or inside a
    /// transaction) after its cluster's primary moved to another node (discovery followed a
    /// promotion, or a reload named another), or while discovery sees a split brain: the node may
    /// still take writes, so the client's next request must not reach it. The client is closed as if that primary had
    /// gone; a reconnect lands on the new one.
    pub(super) fn primary_moved(&self) -> Option<ClientError> {
        let att = self.attached.as_ref()?;
        if self.cin.is_empty() || att.target != Target::Primary || att.backend.role != Role::Primary {
            return None;
        }
        let split = self.rt.config.routing.role_discovery
            && self.pools.cluster().failovers.state() == TopologyState::SplitBrain;
        let rt = self.shared.runtime.load();
        if !split && rt.generation == self.rt.generation {
            return None;
        }
        let name = &self.pools.cluster().name;
        let still =
            rt.clusters.iter().find(|c| &c.name == name).is_some_and(|c| c.primary.address == att.backend.address);
        if still && !split {
            return None;
        }
        tracing::warn!(backend = %att.backend.name, client = self.handle.id, "the primary moved: closing a client that kept a connection to the old one");
        Some(ClientError::fatal(
            "57P01",
            "terminating connection: the primary moved to another node (failover); reconnect to reach the new one",
        ))
    }
}
