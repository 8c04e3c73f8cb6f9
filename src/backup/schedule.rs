//! The schedule. With `at`, runs start at that UTC time of day and every `schedule` after it;
//! without, `schedule` after the newest backup on disk (at once when there is none), so a restart
//! neither skips a day nor repeats one. Databases that failed are tried again after
//! [`RETRY_AFTER`] (or at the next regular run, if sooner).
//!
//! At start (and when `dir` changes) the newest backup of each database on disk counts as its
//! last success for `/metrics`, so a restart does not hide how old the backups are.

use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

use super::files::newest_on_disk;
use super::run::run_all;
use crate::config::BackupConfig;
use crate::pool::cluster::now_ms;
use crate::shared::Shared;

/// Wait before failed databases are tried again.
const RETRY_AFTER: Duration = Duration::from_secs(15 * 60);

/// The loop looks at the configuration at least this often (a reload may change it).
const MAX_SLEEP: Duration = Duration::from_secs(60);

/// The next runs under one configuration.
#[derive(Debug, Clone, PartialEq)]
struct Plan {
    /// The `[backup]` section this plan was made from; a reload that changes it replans.
    cfg: BackupConfig,
    /// Unix ms of the next regular run (every database).
    next_ms: u64,
    /// A retry: when, and which databases (`None`: all, the whole run failed).
    retry: Option<(u64, Option<Vec<String>>)>,
}

/// The first time after `now` that is `at` plus a whole number of `every` (all in ms since the
/// epoch; `at` within the day, `every` dividing a day).
fn next_slot(now: u64, at: u64, every: u64) -> u64 {
    let every = every.max(1) as i128;
    let (now, at) = (now as i128, at as i128);
    (at + ((now - at).div_euclid(every) + 1) * every) as u64
}

impl Plan {
    /// The first run: the next `at` slot, or `schedule` after `newest` (a backup on disk).
    fn new(cfg: BackupConfig, now: u64, newest: Option<u64>) -> Plan {
        let every = cfg.schedule.0.as_millis() as u64;
        let next_ms = match cfg.at_ms() {
            Some(at) => next_slot(now, at, every),
            None => newest.map_or(now, |t| t.saturating_add(every).max(now)),
        };
        Plan { cfg, next_ms, retry: None }
    }

    /// The regular run after one that started at `started` and ended at `ended`.
    fn following(&self, started: u64, ended: u64) -> u64 {
        let every = self.cfg.schedule.0.as_millis() as u64;
        match self.cfg.at_ms() {
            Some(at) => next_slot(ended, at, every),
            None => started.saturating_add(every).max(ended),
        }
    }

    /// How long to sleep from `now` before looking again.
    fn wait(&self, now: u64) -> Duration {
        let due = self.retry.as_ref().map_or(self.next_ms, |(t, _)| (*t).min(self.next_ms));
        Duration::from_millis(due.saturating_sub(now)).min(MAX_SLEEP)
    }

    /// What is due at `now`: `Some(None)` a regular run, `Some(Some(names))` a retry.
    fn due(&mut self, now: u64) -> Option<Option<Vec<String>>> {
        if now >= self.next_ms {
            self.retry = None;
            return Some(None);
        }
        match &self.retry {
            Some((t, _)) if now >= *t => self.retry.take().map(|(_, names)| names),
            _ => None,
        }
    }

    /// After a run: the next regular one if it was regular, and a retry for what failed.
    fn after(&mut self, regular: bool, started: u64, ended: u64, failed: Option<Vec<String>>) {
        if regular {
            self.next_ms = self.following(started, ended);
        }
        let every = Duration::from_millis(self.cfg.schedule.0.as_millis() as u64);
        let at = ended.saturating_add(RETRY_AFTER.min(every).as_millis() as u64);
        self.retry = match failed {
            Some(names) if names.is_empty() => None,
            _ if at >= self.next_ms => None,
            names => Some((at, names)),
        };
    }
}

/// Runs the schedule until `stop`; idle while `[backup]` is absent or `schedule` is 0.
pub async fn run(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut plan: Option<Plan> = None;
    let mut seeded_from: Option<String> = None;
    loop {
        let cfg = shared.runtime.load().config.backup.clone();
        if let Some(c) = cfg.as_ref().filter(|c| seeded_from.as_ref() != Some(&c.dir)) {
            for (db, ts, size) in newest_on_disk(&c.dir) {
                shared.backup.seed(&db, ts, size);
            }
            seeded_from = Some(c.dir.clone());
        }
        plan = match (plan.take(), cfg.filter(|c| !c.schedule.0.is_zero())) {
            (Some(p), Some(c)) if p.cfg == c => Some(p),
            (_, Some(c)) => {
                let newest = newest_on_disk(&c.dir).into_iter().map(|(_, ts, _)| ts).max();
                Some(Plan::new(c, now_ms(), newest))
            }
            (_, None) => None,
        };
        if let Some(p) = plan.as_mut() {
            step(&shared, p).await;
        }
        let wait = plan.as_ref().map_or(MAX_SLEEP, |p| p.wait(now_ms()));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// Runs what is due, if anything, and plans what follows.
async fn step(shared: &Arc<Shared>, plan: &mut Plan) {
    let Some(names) = plan.due(now_ms()) else { return };
    let regular = names.is_none();
    tracing::info!(databases = ?names, "scheduled backup starting");
    let guard = shared.backup.begin().await;
    let started = now_ms();
    let failed = match run_all(shared.clone(), guard, names).await {
        Ok(report) => Some(report.databases.into_iter().filter(|o| !o.ok).map(|o| o.database).collect()),
        Err(e) => {
            tracing::error!("scheduled backup failed: {e}");
            None
        }
    };
    plan.after(regular, started, now_ms(), failed);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Dur;

    const H: u64 = 3_600_000;
    const DAY: u64 = 24 * H;

    fn cfg(schedule: Dur, at: &str) -> BackupConfig {
        BackupConfig { schedule, at: at.into(), ..Default::default() }
    }

    #[test]
    fn slots_follow_the_time_of_day() {
        let day = 20_000 * DAY;
        assert_eq!(next_slot(day + H, 3 * H, DAY), day + 3 * H);
        assert_eq!(next_slot(day + 3 * H, 3 * H, DAY), day + DAY + 3 * H, "strictly after now");
        assert_eq!(next_slot(day + 4 * H, 3 * H, DAY), day + DAY + 3 * H);
        assert_eq!(next_slot(day + 4 * H, 3 * H, 6 * H), day + 9 * H);
        assert_eq!(next_slot(day + 2 * H, 3 * H, 6 * H), day + 3 * H);
    }

    #[test]
    fn without_at_a_run_follows_the_newest_backup_and_a_missing_one_runs_now() {
        let now = 20_000 * DAY;
        let day = cfg(Dur::secs(86_400), "");
        assert_eq!(Plan::new(day.clone(), now, None).next_ms, now);
        assert_eq!(Plan::new(day.clone(), now, Some(now - 2 * H)).next_ms, now + 22 * H);
        assert_eq!(Plan::new(day.clone(), now, Some(now - 2 * DAY)).next_ms, now, "overdue: at once");
        let p = Plan::new(day, now, None);
        assert_eq!(p.following(now, now + H), now + DAY);
        let at = Plan::new(cfg(Dur::secs(86_400), "03:00"), now + H, None);
        assert_eq!(at.next_ms, now + 3 * H);
        assert_eq!(at.following(now + 3 * H, now + 5 * H), now + DAY + 3 * H);
    }

    #[test]
    fn failures_are_retried_alone_before_the_next_regular_run() {
        let now = 20_000 * DAY;
        let mut p = Plan::new(cfg(Dur::secs(86_400), ""), now, None);
        assert_eq!(p.due(now), Some(None));
        p.after(true, now, now + 1000, Some(vec!["b".into()]));
        let retry_at = now + 1000 + RETRY_AFTER.as_millis() as u64;
        assert_eq!(p.retry, Some((retry_at, Some(vec!["b".into()]))));
        assert_eq!(p.due(retry_at - 1), None);
        assert_eq!(p.due(retry_at), Some(Some(vec!["b".into()])));
        p.after(false, retry_at, retry_at + 1000, Some(vec![]));
        assert_eq!((p.retry.clone(), p.next_ms), (None, now + DAY));
        // A schedule shorter than the retry wait: the regular run covers it.
        let mut p = Plan::new(cfg(Dur::secs(600), ""), now, None);
        p.after(true, now, now + 1000, None);
        assert_eq!(p.retry, None);
    }
}
