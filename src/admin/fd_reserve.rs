//! Keeps file descriptors free for the client port: the admin port takes a connection only while
//! at least max(64, 10% of the open-file limit) descriptors would stay free.
//!
//! Linux only (it reads `/proc/self/limits` and `/proc/self/fd`, no unsafe code needed); where
//! those are missing the check passes and `[admin] max_connections` alone bounds the admin port.

/// The soft open-file limit and the share of it the admin port leaves alone.
pub struct FdReserve {
    limit: Option<usize>,
}

/// Descriptors always left for clients and server connections.
const MIN_RESERVE: usize = 64;

impl FdReserve {
    /// Reads this process's soft RLIMIT_NOFILE (once: it rarely changes while running).
    pub fn for_this_process() -> FdReserve {
        let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
        FdReserve { limit: soft_nofile(&limits) }
    }

    /// True when the descriptors open now (the new connection's included) leave the reserve free.
    pub fn has_room(&self) -> bool {
        let Some(limit) = self.limit else { return true };
        let Ok(dir) = std::fs::read_dir("/proc/self/fd") else { return true };
        // The directory being read holds one descriptor itself.
        let open = dir.count().saturating_sub(1);
        open + reserve(limit) <= limit
    }
}

/// max(64, 10%) of `limit`.
fn reserve(limit: usize) -> usize {
    (limit / 10).max(MIN_RESERVE)
}

/// The soft limit from `/proc/self/limits`' "Max open files" line; `None` if unlimited or absent.
fn soft_nofile(limits: &str) -> Option<usize> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..].split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_soft_limit() {
        let text = "Limit                     Soft Limit           Hard Limit           Units     \n\
                    Max processes             63448                63448                processes \n\
                    Max open files            256                  4096                 files     \n";
        assert_eq!(soft_nofile(text), Some(256));
        assert_eq!(soft_nofile("Max open files            unlimited  unlimited  files"), None);
        assert_eq!(reserve(256), 64);
        assert_eq!(reserve(20_000), 2_000);
        assert!(FdReserve { limit: None }.has_room());
        assert!(FdReserve::for_this_process().limit.is_some(), "Linux has /proc/self/limits");
    }
}
