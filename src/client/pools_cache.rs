//! The pools of each (role, database), shared by all of its clients: an idle client holds one
//! pointer to them instead of its own copy. Entries are weak and belong to one runtime
//! generation, so a reload (which may rebuild pools) is never served a stale set.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use super::route::SessionPools;
use crate::error::ClientError;

/// Dead entries are swept when the map reaches a power of two at least this large.
const SWEEP_FROM: usize = 64;

/// An entry: the runtime generation it was made under, and the pools while a client holds them.
type Entry = (u64, Weak<SessionPools>);

/// Live `SessionPools` by role and database name.
#[derive(Default)]
pub struct PoolsCache {
    map: Mutex<HashMap<Box<str>, Entry>>,
}

impl PoolsCache {
    /// The shared pools of `user` in `database` under runtime `generation`, made by `make` when no
    /// client holds them now.
    pub fn get_or_make(
        &self,
        generation: u64,
        user: &str,
        database: &str,
        make: impl FnOnce() -> Result<Arc<SessionPools>, ClientError>,
    ) -> Result<Arc<SessionPools>, ClientError> {
        let key = format!("{user}\0{database}");
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(pools) = map.get(key.as_str()).filter(|(g, _)| *g == generation).and_then(|(_, w)| w.upgrade()) {
            return Ok(pools);
        }
        let pools = make()?;
        if map.len() >= SWEEP_FROM && map.len().is_power_of_two() {
            map.retain(|_, (g, w)| *g == generation && w.strong_count() > 0);
        }
        map.insert(key.into(), (generation, Arc::downgrade(&pools)));
        Ok(pools)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_database_that_cannot_be_served_is_not_cached() {
        let cache = PoolsCache::default();
        let made = std::cell::Cell::new(0);
        let make = || {
            made.set(made.get() + 1);
            Err(ClientError::unknown_database("x"))
        };
        assert!(cache.get_or_make(1, "app", "x", make).is_err(), "an error is not cached");
        assert!(cache.get_or_make(1, "app", "x", make).is_err());
        assert_eq!(made.get(), 2);
    }
}
