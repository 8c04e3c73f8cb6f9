//! `[admin] max_connections_per_ip`: how many admin connections one client address may hold, so
//! one host on the network cannot take every `[admin] max_connections` slot and leave the load
//! balancer's `/health` and `/ready` probes closed.
//!
//! IPv6 addresses count per /64 (one host usually has a whole /64 to pick addresses from);
//! IPv4-mapped IPv6 addresses count as their IPv4 address.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex, MutexGuard};

/// Connections open per client address.
#[derive(Debug, Clone)]
pub struct PeerSlots {
    per_peer: usize,
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// One connection's share of its address's count, given back when dropped.
#[derive(Debug)]
pub struct PeerSlot {
    key: IpAddr,
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl PeerSlots {
    /// At most `per_peer` connections per address; 0 = no bound.
    pub fn new(per_peer: usize) -> PeerSlots {
        PeerSlots { per_peer, open: Arc::default() }
    }

    /// A slot for a connection from `ip`, or `None` when that address holds `per_peer` already.
    pub fn take(&self, ip: IpAddr) -> Option<PeerSlot> {
        let key = key(ip);
        let mut open = lock(&self.open);
        let n = open.entry(key).or_insert(0);
        if self.per_peer != 0 && *n >= self.per_peer {
            return None;
        }
        *n += 1;
        Some(PeerSlot { key, open: self.open.clone() })
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut open = lock(&self.open);
        if let Some(n) = open.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.key);
            }
        }
    }
}

/// Counts are whole values: a panic elsewhere while holding the lock leaves them usable.
fn lock(m: &Mutex<HashMap<IpAddr, usize>>) -> MutexGuard<'_, HashMap<IpAddr, usize>> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The address a connection counts under.
fn key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_address_gets_at_most_its_share() {
        let slots = PeerSlots::new(2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let (s1, s2) = (slots.take(a).unwrap(), slots.take(a).unwrap());
        assert!(slots.take(a).is_none());
        assert!(slots.take("::ffff:10.0.0.1".parse().unwrap()).is_none(), "mapped IPv4 is the same host");
        assert!(slots.take("10.0.0.2".parse().unwrap()).is_some(), "another address has its own");
        drop(s1);
        let s3 = slots.take(a).expect("a closed connection gives its slot back");
        drop((s2, s3));
        assert!(lock(&slots.open).is_empty(), "nothing kept for addresses gone");
    }

    #[test]
    fn ipv6_counts_per_64() {
        let slots = PeerSlots::new(1);
        let _held = slots.take("2001:db8:1:2::1".parse().unwrap()).unwrap();
        assert!(slots.take("2001:db8:1:2:ffff::9".parse().unwrap()).is_none());
        assert!(slots.take("2001:db8:1:3::1".parse().unwrap()).is_some());
        assert!(PeerSlots::new(0).take("10.0.0.1".parse().unwrap()).is_some(), "0: no bound");
    }
}
