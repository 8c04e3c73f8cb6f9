//! Cancel keys that name their instance, and CancelRequests passed on to the instance that owns the key.
//!
//! # Key layout (fleet on)
//! BackendKeyData carries a pid and a secret, 32 bits each. With `[fleet] id` set:
//! - pid bits 0..=13: the fleet id of the instance that gave the key (1..=16383);
//! - pid bits 14..=30: random, at least 2^8, so every pid stays above the client pid floor
//!   (2^22) that tells pgshift clients from PostgreSQL backends;
//! - pid bit 31 (the sign): 0 in every key a client holds; set only on a CancelRequest one
//!   instance forwards to another, so a forwarded request is never forwarded again;
//! - secret: 32 random bits, as without a fleet.
//!
//! The pid is not secret (a NOTIFY shows its sender's pid to listeners), so the secret is what
//! a forger must guess, and it keeps all 32 bits. The pid keeps 17 random bits (of about 31
//! without a fleet): blind guessing of a whole key gets 2^14 times easier, 2^49 instead of 2^63.

use rand::Rng;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::registry::CLIENT_PID_FLOOR;
use crate::config::FleetConfig;
use crate::wire::messages;

/// Bits of the pid that hold the fleet id.
const ID_BITS: u32 = 14;
const ID_MASK: i32 = (1 << ID_BITS) - 1;
/// Marks a forwarded CancelRequest (the pid's sign bit: client pids are always positive).
const FORWARDED: i32 = i32::MIN;
/// Bound on connecting to a peer: a peer that is down must not hold the cancel's connection long.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// A fresh client pid: random above the floor, or with `fleet_id` in its low bits.
pub fn new_pid(fleet_id: u16, rng: &mut impl Rng) -> i32 {
    if fleet_id == 0 {
        return rng.gen_range(CLIENT_PID_FLOOR..i32::MAX);
    }
    let high = rng.gen_range((CLIENT_PID_FLOOR >> ID_BITS)..(1 << (31 - ID_BITS)));
    (high << ID_BITS) | (i32::from(fleet_id) & ID_MASK)
}

/// What to do with a CancelRequest whose key no local client holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Nothing: no fleet, a forwarded request, this instance's own key, or not a client pid.
    Drop,
    /// The key names a fleet id that is not configured: dropped without connecting anywhere.
    UnknownPeer(u16),
    /// Forward to this peer (its id and address).
    Forward(u16, String),
}

/// A CancelRequest's pid without the forwarded mark, and whether it had it (fleet on only).
pub fn unmark(fleet: &FleetConfig, pid: i32) -> (i32, bool) {
    if fleet.enabled() && pid < 0 {
        (pid & !FORWARDED, true)
    } else {
        (pid, false)
    }
}

/// Where a CancelRequest for `pid` goes when no local client has the key. Pure: the forward is
/// only ever toward a configured peer, at most once per request.
pub fn decide(fleet: &FleetConfig, pid: i32, forwarded: bool) -> Decision {
    if !fleet.enabled() || forwarded || pid < CLIENT_PID_FLOOR {
        return Decision::Drop;
    }
    let id = (pid & ID_MASK) as u16;
    if id == fleet.id {
        return Decision::Drop;
    }
    match fleet.peer(id) {
        Some(address) => Decision::Forward(id, address.to_string()),
        None => Decision::UnknownPeer(id),
    }
}

/// Forwarded cancel requests by outcome (`pgshift_cancel_forwarded_total`).
#[derive(Debug, Default)]
pub struct ForwardCounters {
    /// Delivered to the peer.
    pub sent: AtomicU64,
    /// The peer could not be reached (or the write failed).
    pub failed: AtomicU64,
    /// The key named a fleet id that is not configured: not forwarded.
    pub unknown_peer: AtomicU64,
}

impl ForwardCounters {
    /// (outcome label, count) for `/metrics`.
    pub fn snapshot(&self) -> [(&'static str, u64); 3] {
        [
            ("sent", self.sent.load(Ordering::Relaxed)),
            ("failed", self.failed.load(Ordering::Relaxed)),
            ("unknown_peer", self.unknown_peer.load(Ordering::Relaxed)),
        ]
    }
}

/// Carries out a decision for a CancelRequest no local client matched: counts it, and forwards
/// it (marked as forwarded) when it names a configured peer. `wait` bounds the peer's handling.
pub async fn forward(counters: &ForwardCounters, decision: Decision, pid: i32, secret: i32, wait: Duration) {
    match decision {
        Decision::Drop => {}
        Decision::UnknownPeer(id) => {
            counters.unknown_peer.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(fleet_id = id, "cancel request names a fleet id that is not a configured peer: dropped");
        }
        Decision::Forward(id, address) => match send(&address, pid | FORWARDED, secret, wait).await {
            Ok(peer) => {
                counters.sent.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(fleet_id = id, %peer, "cancel request forwarded to its fleet peer");
            }
            Err(e) => {
                counters.failed.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(fleet_id = id, %address, "forwarding a cancel request failed: {e}");
            }
        },
    }
}

/// Connects (bounded by [`CONNECT_TIMEOUT`]), writes the CancelRequest, and waits up to `wait`
/// for the peer to close, which it does once it has passed the cancel on to PostgreSQL.
async fn send(address: &str, pid: i32, secret: i32, wait: Duration) -> std::io::Result<SocketAddr> {
    let connect = tokio::net::TcpStream::connect(address);
    let mut tcp = tokio::time::timeout(CONNECT_TIMEOUT, connect)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    let peer = tcp.peer_addr()?;
    tcp.write_all(&messages::cancel_request(pid, secret)).await?;
    let drain = async {
        let mut sink = [0u8; 64];
        while tcp.read(&mut sink).await.unwrap_or(0) > 0 {}
    };
    let _ = tokio::time::timeout(wait, drain).await;
    Ok(peer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{FleetPeer, MAX_FLEET_ID};

    fn fleet(id: u16, peers: &[u16]) -> FleetConfig {
        let peers = peers.iter().map(|&id| FleetPeer { id, address: format!("10.0.0.{id}:6432") }).collect();
        FleetConfig { id, peers, ..Default::default() }
    }

    #[test]
    fn fleet_pids_carry_the_id_and_stay_above_the_floor() {
        let mut rng = rand::thread_rng();
        for id in [1, 2, 77, MAX_FLEET_ID] {
            for _ in 0..10_000 {
                let pid = new_pid(id, &mut rng);
                assert!(pid > CLIENT_PID_FLOOR, "{pid}");
                assert_eq!((pid & ID_MASK) as u16, id);
            }
        }
        assert!(new_pid(0, &mut rng) >= CLIENT_PID_FLOOR);
        // The smallest and largest possible pids.
        const { assert!((((CLIENT_PID_FLOOR >> ID_BITS) << ID_BITS) | 1) > CLIENT_PID_FLOOR) };
        assert_eq!((((1 << (31 - ID_BITS)) - 1) << ID_BITS) | i32::from(MAX_FLEET_ID), i32::MAX);
    }

    #[test]
    fn only_configured_peers_get_a_forward() {
        let f = fleet(1, &[2, 3]);
        let pid = |id: u16| new_pid(id, &mut rand::thread_rng());
        assert_eq!(decide(&f, pid(2), false), Decision::Forward(2, "10.0.0.2:6432".into()));
        assert_eq!(decide(&f, pid(1), false), Decision::Drop, "own keys are never forwarded");
        assert_eq!(decide(&f, pid(9), false), Decision::UnknownPeer(9));
        assert_eq!(decide(&f, pid(2), true), Decision::Drop, "a forwarded request is not forwarded again");
        assert_eq!(decide(&f, 1234, false), Decision::Drop, "a backend pid is not a client key");
        assert_eq!(decide(&fleet(0, &[]), pid(2), false), Decision::Drop, "no fleet, no forwarding");
    }

    #[test]
    fn the_forwarded_mark_comes_off_only_with_a_fleet() {
        let f = fleet(1, &[2]);
        let pid = new_pid(2, &mut rand::thread_rng());
        assert_eq!(unmark(&f, pid | FORWARDED), (pid, true));
        assert_eq!(unmark(&f, pid), (pid, false));
        assert_eq!(unmark(&fleet(0, &[]), pid | FORWARDED), (pid | FORWARDED, false));
    }
}
