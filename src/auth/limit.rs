//! A per-address limit on failed logins (`[auth] max_failed_logins` per `failed_login_window`):
//! an address that failed that often within the window is refused at once until the window
//! passes, as fail2ban would do in front of PostgreSQL. The map is bounded, so an attacker with
//! many addresses cannot grow it without bound. Clients of the Unix-domain socket have no
//! address to tell them apart: they count as one address (`None`).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Addresses tracked at most; past it, expired windows and then the oldest are dropped.
const MAX_ADDRESSES: usize = 65_536;

/// The limit in force: `max` failures per `window` (`max` = 0: no limit).
#[derive(Debug, Clone, Copy)]
pub struct Limit {
    /// Failures allowed within one window.
    pub max: u32,
    /// Length of a window, from an address's first failure in it.
    pub window: Duration,
}

/// Failed logins by client address.
#[derive(Default)]
pub struct FailedLogins {
    map: Mutex<HashMap<Option<IpAddr>, (Instant, u32)>>,
}

impl FailedLogins {
    /// True if `ip` (`None`: the Unix socket) has used up its failures in its current window.
    pub fn blocked(&self, ip: Option<IpAddr>, limit: Limit) -> bool {
        if limit.max == 0 {
            return false;
        }
        let Ok(map) = self.map.lock() else { return false };
        map.get(&ip.map(|i| i.to_canonical()))
            .is_some_and(|(start, n)| *n >= limit.max && start.elapsed() < limit.window)
    }

    /// Counts one failed login from `ip` (`None`: the Unix socket).
    pub fn record(&self, ip: Option<IpAddr>, limit: Limit) {
        if limit.max == 0 {
            return;
        }
        let Ok(mut map) = self.map.lock() else { return };
        let ip = ip.map(|i| i.to_canonical());
        if !map.contains_key(&ip) && map.len() >= MAX_ADDRESSES {
            map.retain(|_, (start, _)| start.elapsed() < limit.window);
            if map.len() >= MAX_ADDRESSES {
                if let Some(oldest) = map.iter().min_by_key(|(_, (start, _))| *start).map(|(k, _)| *k) {
                    map.remove(&oldest);
                }
            }
        }
        let entry = map.entry(ip).or_insert((Instant::now(), 0));
        if entry.0.elapsed() >= limit.window {
            *entry = (Instant::now(), 0);
        }
        entry.1 = entry.1.saturating_add(1);
    }

    /// Addresses tracked now.
    pub fn len(&self) -> usize {
        self.map.lock().map(|m| m.len()).unwrap_or(0)
    }

    /// True if no address is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_after_max_failures_until_the_window_passes() {
        let f = FailedLogins::default();
        let limit = Limit { max: 2, window: Duration::from_millis(200) };
        let a: Option<IpAddr> = Some("10.0.0.1".parse().unwrap());
        let b: Option<IpAddr> = Some("10.0.0.2".parse().unwrap());
        f.record(a, limit);
        assert!(!f.blocked(a, limit));
        f.record(a, limit);
        assert!(f.blocked(a, limit));
        assert!(f.blocked(Some("::ffff:10.0.0.1".parse().unwrap()), limit), "IPv4 seen through an IPv6 socket");
        assert!(!f.blocked(b, limit));
        assert!(!f.blocked(None, limit), "the Unix socket is an address of its own");
        assert!(!f.blocked(a, Limit { max: 0, ..limit }), "0 is off");
        std::thread::sleep(Duration::from_millis(250));
        assert!(!f.blocked(a, limit));
        f.record(a, limit);
        assert!(!f.blocked(a, limit), "a new window starts from zero");
    }

    #[test]
    fn the_map_stays_bounded() {
        let f = FailedLogins::default();
        let limit = Limit { max: 5, window: Duration::from_secs(60) };
        for i in 0..(MAX_ADDRESSES as u32 + 10) {
            f.record(Some(IpAddr::from(i.to_be_bytes())), limit);
        }
        assert_eq!(f.len(), MAX_ADDRESSES);
    }
}
