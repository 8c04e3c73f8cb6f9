//! Backends (the primary and its replicas) with their health, and round-robin replica choice.

use serde::Serialize;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What a backend is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Takes writes.
    Primary,
    /// Serves reads.
    Replica,
    /// Primary of a migration's target cluster.
    TargetPrimary,
    /// Replica of a migration's target cluster.
    TargetReplica,
}

/// Milliseconds on a monotonic clock (since the first call in this process).
pub fn mono_ms() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START.get_or_init(std::time::Instant::now).elapsed().as_millis() as u64 + 1
}

/// Parses a WAL position `X/Y` (hex) into a byte offset.
pub fn parse_lsn(s: &str) -> Option<u64> {
    let (hi, lo) = s.split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

/// Health as last probed.
#[derive(Debug, Default)]
pub struct Health {
    /// [`mono_ms`] when the probe that read `lsn` was sent: any commit acknowledged before
    /// that instant is at or below `lsn`.
    pub lsn_sampled_at: AtomicU64,
    /// WAL bytes the replica is behind the primary, from the last probe.
    pub lag_bytes: AtomicU64,
    /// Reads sent to the primary because no replica had replayed the client's last write.
    pub ryw_fallbacks: AtomicU64,
    /// A probe task is running for this backend.
    pub probing: AtomicBool,
    /// Unix ms until which the backend is banned (0 = not banned).
    pub banned_until_ms: AtomicU64,
    /// Replay lag in ms (replicas), from the last probe.
    pub lag_ms: AtomicU64,
    /// When (`mono_ms`) a probe last found this replica streaming with all it received replayed
    /// (0: never): a replay in progress since then is at most that old.
    pub caught_up_at: AtomicU64,
    /// Last replayed (replica) or current (primary) WAL position.
    pub lsn: AtomicU64,
    /// True once a probe saw `pg_is_in_recovery()`.
    pub in_recovery: AtomicBool,
    /// True if the last probe succeeded.
    pub up: AtomicBool,
    /// True once any probe has run.
    pub probed: AtomicBool,
    /// Why the last probe failed, for the admin port (no host names: it is ours to show).
    pub last_error: Mutex<Option<String>>,
    /// Statements routed here.
    pub routed: AtomicU64,
    /// The timeline a node out of recovery writes on, from the last probe (0: unknown or in
    /// recovery). After a promotion the new primary's timeline is higher than the old one's.
    pub timeline: AtomicU64,
}

/// Role discovery's view of the cluster, for the admin port and `/ready`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum TopologyState {
    /// The primary is known and answers.
    #[default]
    Primary,
    /// No node out of recovery answers: writes wait for one (failover in progress).
    NoPrimary,
    /// Several nodes out of recovery on the same, highest timeline: pgshift refuses to pick.
    SplitBrain,
    /// Not every node has answered or failed its first probe yet (just started, or the cluster
    /// just appeared in a reload): writes wait, since the node declared primary may be an old
    /// primary a failover left behind.
    Discovering,
}

/// Failovers seen and the current state, written by the topology watcher.
#[derive(Debug, Default)]
pub struct Failovers {
    /// Primary changes made by role discovery.
    pub count: AtomicU64,
    /// Unix ms of the last one (0: none).
    pub last_at_ms: AtomicU64,
    /// How long the last one took, from the primary's first failed probe to the switch.
    pub last_duration_ms: AtomicU64,
    /// The highest timeline a primary of this cluster was seen writing on (0: none yet). A node
    /// out of recovery below it is an old primary that was never rewound: it never becomes the
    /// primary again, even when it is the only one left out of recovery.
    pub timeline: AtomicU64,
    /// [`TopologyState`] as a number (0 primary, 1 none, 2 split brain, 3 discovering).
    state: std::sync::atomic::AtomicU8,
    /// Wakes clients waiting for a primary.
    pub changed: tokio::sync::Notify,
}

impl Failovers {
    /// A cluster's record, starting in `state`.
    pub fn new(state: TopologyState) -> Self {
        let f = Failovers::default();
        f.set_state(state);
        f
    }

    /// The current state.
    pub fn state(&self) -> TopologyState {
        match self.state.load(Ordering::Relaxed) {
            1 => TopologyState::NoPrimary,
            2 => TopologyState::SplitBrain,
            3 => TopologyState::Discovering,
            _ => TopologyState::Primary,
        }
    }
    /// Records the state, waking the clients waiting on a change.
    pub fn set_state(&self, s: TopologyState) {
        let v = match s {
            TopologyState::Primary => 0,
            TopologyState::NoPrimary => 1,
            TopologyState::SplitBrain => 2,
            TopologyState::Discovering => 3,
        };
        if self.state.swap(v, Ordering::Relaxed) != v {
            self.changed.notify_waiters();
        }
    }
}

/// A PostgreSQL server the proxy can send to.
#[derive(Debug)]
pub struct Backend {
    /// Primary, replica, or a migration target.
    pub role: Role,
    /// `host:port`.
    pub address: String,
    /// "primary", "replica0", ... for stats and errors.
    pub name: String,
    /// Health from the probe task.
    pub health: Health,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl Backend {
    /// A backend not yet probed (assumed usable until a probe says otherwise).
    pub fn new(role: Role, address: String, name: String) -> Backend {
        Backend { role, address, name, health: Health::default() }
    }

    /// True while banned.
    pub fn is_banned(&self) -> bool {
        self.health.banned_until_ms.load(Ordering::Relaxed) > now_ms()
    }

    /// Bans for `d` (a failed probe or connection).
    pub fn ban(&self, d: Duration, why: &str) {
        let until = now_ms() + d.as_millis() as u64;
        self.health.banned_until_ms.store(until, Ordering::Relaxed);
        if let Ok(mut e) = self.health.last_error.lock() {
            *e = Some(why.to_string());
        }
    }

    /// Lifts a ban (a probe succeeded again).
    pub fn unban(&self) {
        self.health.banned_until_ms.store(0, Ordering::Relaxed);
    }
}

/// A primary and its replicas: the `default` cluster (`[primary]` + `[[replicas]]`) or a
/// `[clusters.NAME]`. Rebuilt with each runtime; its failover record carries over by name.
#[derive(Debug)]
pub struct Cluster {
    /// `default` or the `[clusters]` key.
    pub name: String,
    /// The node writes go to (as declared, or as role discovery found it).
    pub primary: Arc<Backend>,
    /// The others, serving reads.
    pub replicas: Vec<Arc<Backend>>,
    /// Round-robin cursor over the replicas.
    pub rr: RoundRobin,
    /// Role discovery's state and failover record for this cluster.
    pub failovers: Arc<Failovers>,
}

impl Cluster {
    /// The primary, then the replicas.
    pub fn nodes(&self) -> impl Iterator<Item = &Arc<Backend>> {
        std::iter::once(&self.primary).chain(self.replicas.iter())
    }
}

/// Round-robin cursor over replicas.
#[derive(Debug, Default)]
pub struct RoundRobin(AtomicUsize);

impl RoundRobin {
    /// The next index among `n` for which `usable` holds, starting after the last one given.
    /// `advance` false leaves the cursor where it is: a request that only prepares a statement
    /// (Parse/Describe, as drivers send before each Bind/Execute) must not take a turn, or every
    /// execution of a client would alias onto the same replica.
    pub fn pick(&self, n: usize, advance: bool, usable: impl Fn(usize) -> bool) -> Option<usize> {
        if n == 0 {
            return None;
        }
        let start = if advance { self.0.fetch_add(1, Ordering::Relaxed) } else { self.0.load(Ordering::Relaxed) };
        (0..n).map(|i| (start + i) % n).find(|&i| usable(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_robin_skips_unusable() {
        let rr = RoundRobin::default();
        let picks: Vec<_> = (0..4).map(|_| rr.pick(3, true, |i| i != 1).unwrap()).collect();
        assert!(!picks.contains(&1));
        assert!(picks.contains(&0) && picks.contains(&2));
        assert_eq!(rr.pick(2, true, |_| false), None);
    }
}
