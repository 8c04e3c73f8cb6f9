//! Pool upkeep: closing idle and old connections, keeping `min_pool_size` warm, RECONNECT and
//! retirement when a backend leaves the configuration.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Pool;

impl Pool {
    /// Periodic upkeep: close connections idle too long or too old, open up to `min`.
    /// Returns how many connections to open.
    pub fn maintain(&self) -> usize {
        let s = self.settings.load();
        let now = Instant::now();
        let mut closed = Vec::new();
        let deficit = {
            let mut inner = self.lock();
            let mut keep = Vec::with_capacity(inner.idle.len());
            let idle_count = inner.idle.len();
            for (i, c) in std::mem::take(&mut inner.idle).into_iter().enumerate() {
                let too_idle = s.idle_timeout.is_some_and(|t| past(c.last_used, t, now))
                    && inner.open - closed.len() > s.min
                    && i < idle_count;
                let too_old = s.lifetime.is_some_and(|l| past(c.created, l, now));
                if too_idle || too_old || inner.retired {
                    closed.push(c);
                } else {
                    keep.push(c);
                }
            }
            inner.idle = keep;
            if inner.retired {
                0
            } else {
                s.min.saturating_sub(inner.open - closed.len())
            }
        };
        for c in closed {
            self.discard(c);
        }
        deficit
    }

    /// Opens one connection into the idle stack (to keep `min_pool_size` warm).
    pub async fn warm_one(self: &Arc<Self>) {
        {
            let s = self.settings.load();
            let mut inner = self.lock();
            if inner.open >= s.min.max(1).min(s.size) || !self.take_limits() {
                return;
            }
            inner.open += 1;
            inner.connecting += 1;
        }
        if let Ok(c) = self.open_in_slot().await {
            self.return_conn(c);
        }
    }

    /// Closes idle connections now and those in use at their next check-in.
    pub fn reconnect(&self) {
        let idle = {
            let mut inner = self.lock();
            inner.reconnect_at = Some(Instant::now());
            std::mem::take(&mut inner.idle)
        };
        for c in idle {
            self.discard(c);
        }
    }

    /// Marks the pool as leaving: idle connections close now, leased ones at check-in.
    pub fn retire(&self) {
        self.lock().retired = true;
        self.reconnect();
    }
}

/// Whether `d` after `since` has passed by `now`: a deadline compared (an addition) rather than
/// an age computed (a subtraction with its checks); the pool's checkouts and check-ins ask it too.
pub(super) fn past(since: Instant, d: Duration, now: Instant) -> bool {
    since.checked_add(d).is_some_and(|t| now > t)
}
