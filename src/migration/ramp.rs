//! The read-shift autopilot: in `shift_reads`, start the target's read share at
//! `ramp_start_percent` and raise it by `ramp_step_percent` every `ramp_interval` while the
//! target's reads fail less than `ramp_max_error_ratio` and their p95 latency stays within
//! `ramp_max_latency_factor` of the source's; on a breach (or the target's probe failing) the
//! share drops to 0% at once, and why is logged and counted. Any phase change by an operator
//! stops it.

use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::Phase;
use crate::shared::Shared;

/// Reads a store must have served in a window before its figures count.
pub const MIN_READS: u64 = 20;
/// Latency buckets: four per power of two of microseconds, up to about 70 s.
const BUCKETS: usize = 4 * 26;

/// Reads served by one store during `shift_reads`: count, errors, latency histogram.
#[derive(Debug)]
pub struct ReadStats {
    reads: AtomicU64,
    errors: AtomicU64,
    buckets: [AtomicU64; BUCKETS],
}

impl Default for ReadStats {
    fn default() -> Self {
        ReadStats {
            reads: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

fn bucket(us: u64) -> usize {
    let us = us.max(1);
    let log = 63 - us.leading_zeros() as usize;
    let sub = if log >= 2 { ((us >> (log - 2)) & 3) as usize } else { 0 };
    (log * 4 + sub).min(BUCKETS - 1)
}

/// The upper bound of a bucket, in microseconds.
fn bucket_upper_us(i: usize) -> u64 {
    let (log, sub) = (i / 4, (i % 4) as u64);
    if log < 2 {
        return 1 << (log + 1);
    }
    (1u64 << log) + ((sub + 1) << (log - 2))
}

impl ReadStats {
    /// Records one read transaction.
    pub fn record(&self, elapsed: Duration, errored: bool) {
        self.reads.fetch_add(1, Ordering::Relaxed);
        if errored {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        self.buckets[bucket(elapsed.as_micros() as u64)].fetch_add(1, Ordering::Relaxed);
    }

    fn snapshot(&self) -> Snap {
        Snap {
            reads: self.reads.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            buckets: std::array::from_fn(|i| self.buckets[i].load(Ordering::Relaxed)),
        }
    }
}

/// Counters at one moment; differences of two give a window.
#[derive(Debug, Clone)]
struct Snap {
    reads: u64,
    errors: u64,
    buckets: [u64; BUCKETS],
}

impl Snap {
    fn since(&self, earlier: &Snap) -> Snap {
        Snap {
            reads: self.reads.saturating_sub(earlier.reads),
            errors: self.errors.saturating_sub(earlier.errors),
            buckets: std::array::from_fn(|i| self.buckets[i].saturating_sub(earlier.buckets[i])),
        }
    }

    /// The 95th percentile, in microseconds (a bucket's upper bound: within 25%).
    fn p95_us(&self) -> Option<u64> {
        let total: u64 = self.buckets.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = (total * 95).div_ceil(100);
        let mut seen = 0;
        self.buckets.iter().enumerate().find_map(|(i, n)| {
            seen += n;
            (seen >= rank).then(|| bucket_upper_us(i))
        })
    }
}

/// What the ramp is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum RampState {
    /// Not started, or stopped by an operator.
    #[default]
    Off,
    /// Raising the share step by step.
    Running,
    /// Reached 100%.
    Complete,
    /// Dropped to 0% after a breach.
    Breached,
}

/// The ramp's figures, for `GET /migration`.
#[derive(Debug, Clone, Serialize, Default)]
pub struct RampStatus {
    /// What it is doing.
    pub state: RampState,
    /// Breaches so far (each dropped the share to 0%).
    pub breaches: u64,
    /// Why the last breach happened.
    pub last_breach: Option<String>,
    /// Reads the target and the source served in the current step.
    pub target_reads: u64,
    /// See `target_reads`.
    pub source_reads: u64,
    /// Target reads that failed in the current step.
    pub target_errors: u64,
    /// p95 latency of the target's and the source's reads in the current step, in ms.
    pub target_p95_ms: Option<f64>,
    /// See `target_p95_ms`.
    pub source_p95_ms: Option<f64>,
}

struct Step {
    started: Instant,
    target: Snap,
    source: Snap,
}

/// The ramp's live state and the read statistics it reads.
#[derive(Default)]
pub struct Ramp {
    /// Reads the target served in shift_reads.
    pub target: ReadStats,
    /// Reads the source served in shift_reads.
    pub source: ReadStats,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    state: RampState,
    step: Option<Step>,
    breaches: u64,
    last_breach: Option<String>,
}

impl Ramp {
    /// Starts (or restarts) the ramp; the caller has set the starting share.
    pub fn start(&self) {
        if let Ok(mut i) = self.inner.lock() {
            i.state = RampState::Running;
            i.step = Some(self.new_step());
        }
    }

    /// An operator changed the phase or the share by hand: the ramp stops where it is.
    pub fn stop(&self) {
        if let Ok(mut i) = self.inner.lock() {
            if i.state == RampState::Running {
                tracing::info!("read-shift ramp stopped by an operator's change");
                i.state = RampState::Off;
            }
        }
    }

    fn new_step(&self) -> Step {
        Step { started: Instant::now(), target: self.target.snapshot(), source: self.source.snapshot() }
    }

    /// The ramp's figures now, and `also()` read under the ramp's lock, which a step holds while it
    /// moves the read share: a read share taken so agrees with the ramp's state (never 70% with
    /// the ramp complete).
    pub fn status_with<R>(&self, also: impl FnOnce() -> R) -> (RampStatus, R) {
        let Ok(i) = self.inner.lock() else { return (RampStatus::default(), also()) };
        let also = also();
        let (t, s) = match &i.step {
            Some(step) => (self.target.snapshot().since(&step.target), self.source.snapshot().since(&step.source)),
            None => (self.target.snapshot(), self.source.snapshot()),
        };
        let status = RampStatus {
            state: i.state,
            breaches: i.breaches,
            last_breach: i.last_breach.clone(),
            target_reads: t.reads,
            source_reads: s.reads,
            target_errors: t.errors,
            target_p95_ms: t.p95_us().map(|u| u as f64 / 1000.0),
            source_p95_ms: s.p95_us().map(|u| u as f64 / 1000.0),
        };
        (status, also)
    }
}

/// What one look at the current step decides.
#[derive(Debug, PartialEq)]
enum Verdict {
    Hold,
    StepUp,
    Breach(String),
}

fn judge(target: &Snap, source: &Snap, target_up: bool, interval_over: bool, max_errors: f64, factor: f64) -> Verdict {
    if !target_up {
        return Verdict::Breach("the target does not answer its probe".into());
    }
    // Errors that fail on either store (a client's own mistakes) do not count against the
    // target: its ratio must be above the threshold and above the source's by as much.
    let ratio = |s: &Snap| if s.reads >= MIN_READS { s.errors as f64 / s.reads as f64 } else { 0.0 };
    if target.reads >= MIN_READS && ratio(target) > max_errors && ratio(target) > ratio(source) + max_errors {
        return Verdict::Breach(format!(
            "{} of {} reads on the target failed (above {}%)",
            target.errors,
            target.reads,
            max_errors * 100.0
        ));
    }
    if target.reads >= MIN_READS && source.reads >= MIN_READS {
        if let (Some(t), Some(s)) = (target.p95_us(), source.p95_us()) {
            if t as f64 > factor * s as f64 {
                return Verdict::Breach(format!(
                    "p95 read latency {:.1} ms on the target against {:.1} ms on the source (more than {factor}x)",
                    t as f64 / 1000.0,
                    s as f64 / 1000.0
                ));
            }
        }
    }
    if interval_over && target.reads >= MIN_READS {
        Verdict::StepUp
    } else {
        Verdict::Hold
    }
}

/// Watches the ramp every 200 ms until `stop`.
pub async fn run(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        look(&shared);
    }
}

fn look(shared: &Shared) {
    let m = &shared.migration;
    let rt = shared.runtime.load();
    let Some(cfg) = rt.config.migration.as_ref() else { return };
    // one change at a time: an operator's change in progress wins
    let Ok(_changing) = m.changing.try_lock() else { return };
    let Ok(mut inner) = m.ramp.inner.lock() else { return };
    if inner.state != RampState::Running || m.phase() != Phase::ShiftReads {
        return;
    }
    let Some(step) = inner.step.as_ref() else { return };
    let target = m.ramp.target.snapshot().since(&step.target);
    let source = m.ramp.source.snapshot().since(&step.source);
    let target_up = rt.targets.first().is_some_and(|b| b.health.up.load(Ordering::Relaxed));
    let interval_over = step.started.elapsed() >= cfg.ramp_interval.0;
    let verdict =
        judge(&target, &source, target_up, interval_over, cfg.ramp_max_error_ratio, cfg.ramp_max_latency_factor);
    match verdict {
        Verdict::Hold => {}
        Verdict::StepUp => {
            let next = (m.read_percent() + cfg.ramp_step_percent).min(100);
            if m.set(Phase::ShiftReads, Some(next)).is_ok() {
                tracing::info!(read_percent = next, "read-shift ramp: a step up");
                inner.step = Some(m.ramp.new_step());
                if next == 100 {
                    inner.state = RampState::Complete;
                }
            }
        }
        Verdict::Breach(why) => {
            let _ = m.set(Phase::ShiftReads, Some(0));
            tracing::warn!(reason = %why, "read-shift ramp breached: every read back on the source (0%)");
            inner.state = RampState::Breached;
            inner.breaches += 1;
            inner.last_breach = Some(why);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(latencies_ms: &[(u64, u64)], errors: u64) -> Snap {
        let s = ReadStats::default();
        for &(ms, n) in latencies_ms {
            for _ in 0..n {
                s.record(Duration::from_millis(ms), false);
            }
        }
        s.errors.store(errors, Ordering::Relaxed);
        s.snapshot()
    }

    #[test]
    fn buckets_are_within_a_quarter() {
        for us in [1u64, 3, 7, 100, 999, 1500, 20_000, 3_000_000] {
            let upper = bucket_upper_us(bucket(us));
            assert!(upper > us && upper as f64 <= us as f64 * 1.25 + 2.0, "{us} -> {upper}");
        }
    }

    #[test]
    fn the_verdicts() {
        let fast = snap(&[(1, 100)], 0);
        let slow = snap(&[(1, 50), (30, 50)], 0);
        assert_eq!(judge(&fast, &fast, true, false, 0.01, 2.0), Verdict::Hold);
        assert_eq!(judge(&fast, &fast, true, true, 0.01, 2.0), Verdict::StepUp);
        assert!(matches!(judge(&fast, &fast, false, true, 0.01, 2.0), Verdict::Breach(w) if w.contains("probe")));
        assert!(matches!(judge(&slow, &fast, true, true, 0.01, 2.0), Verdict::Breach(w) if w.contains("p95")));
        let failing = snap(&[(1, 100)], 2);
        assert!(matches!(judge(&failing, &fast, true, true, 0.01, 2.0), Verdict::Breach(w) if w.contains("2 of 100")));
        let both_failing = snap(&[(1, 100)], 3);
        assert_eq!(
            judge(&both_failing, &both_failing, true, false, 0.01, 2.0),
            Verdict::Hold,
            "the clients' own errors"
        );
        let few = snap(&[(1, 5)], 5);
        assert_eq!(judge(&few, &fast, true, true, 0.01, 2.0), Verdict::Hold, "too few reads to judge or step");
    }
}
