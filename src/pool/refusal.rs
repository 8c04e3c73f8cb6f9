//! A server that refused this pool's role its login (a role or password made on the primary and
//! not replayed on a replica yet): remembered for a while, so reads as that role go elsewhere
//! without a failed login each, and the server stays in service for every other role.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::cluster::mono_ms;
use super::Pool;

impl Pool {
    /// Logins of this pool's role to its server failed as a refusal: skip it for `d`.
    pub fn refuse_logins_for(&self, d: Duration) {
        let until = mono_ms().saturating_add(d.as_millis().try_into().unwrap_or(u64::MAX));
        self.login_refused_until.store(until, Ordering::Relaxed);
    }

    /// Whether the server refused this pool's role within the last `ban_time`.
    /// Once the time has passed the mark is cleared, so pools that were never refused, or no
    /// longer are, cost one load and no clock read.
    pub fn refuses_logins(&self) -> bool {
        let until = self.login_refused_until.load(Ordering::Relaxed);
        if until == 0 {
            return false;
        }
        if mono_ms() < until {
            return true;
        }
        let _ = self.login_refused_until.compare_exchange(until, 0, Ordering::Relaxed, Ordering::Relaxed);
        false
    }
}
