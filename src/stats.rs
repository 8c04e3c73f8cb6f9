//! Counters and latency histograms, sharded per worker thread so the hot path never contends.
//!
//! Each runtime worker thread writes only its own cache-line-padded shard (relaxed atomics and an
//! uncontended mutex around its histograms); readers (the admin port) merge all shards. Recording a
//! transaction costs a few relaxed adds and one histogram record.

use hdrhistogram::Histogram;
use serde::Serialize;
use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use crate::router::StatementKind;

/// Shards per counter set; more than workers so that blocking threads rarely share one.
const SHARDS: usize = 16;

/// Aligns a shard to its own cache lines so that two workers never write the same line.
#[repr(align(128))]
#[derive(Default)]
struct Padded<T>(T);

static NEXT_SHARD: AtomicUsize = AtomicUsize::new(0);
thread_local! {
    static SHARD: Cell<usize> = Cell::new(NEXT_SHARD.fetch_add(1, Ordering::Relaxed) % SHARDS);
}

fn shard_index() -> usize {
    SHARD.with(Cell::get)
}

/// A counter set replicated per shard.
pub struct Sharded<T>(Box<[Padded<T>]>);

impl<T: Default> Default for Sharded<T> {
    fn default() -> Self {
        Sharded((0..SHARDS).map(|_| Padded::default()).collect())
    }
}

impl<T> Sharded<T> {
    /// This thread's shard.
    #[inline]
    pub fn local(&self) -> &T {
        &self.0[shard_index() % SHARDS].0
    }
    /// All shards, for merging.
    pub fn all(&self) -> impl Iterator<Item = &T> {
        self.0.iter().map(|p| &p.0)
    }
}

/// Per-pool traffic counters (PgBouncer's SHOW STATS columns).
#[derive(Default)]
pub struct TrafficCounters {
    /// Transactions completed.
    pub xacts: AtomicU64,
    /// Requests (simple queries and extended batches) completed.
    pub queries: AtomicU64,
    /// Bytes from clients.
    pub bytes_in: AtomicU64,
    /// Bytes to clients.
    pub bytes_out: AtomicU64,
    /// Microseconds spent in transactions.
    pub xact_us: AtomicU64,
    /// Microseconds spent in requests.
    pub query_us: AtomicU64,
    /// Microseconds clients waited for a server connection.
    pub wait_us: AtomicU64,
}

/// Counters of one pool.
#[derive(Default)]
pub struct PoolStats {
    /// Traffic, sharded.
    pub traffic: Sharded<TrafficCounters>,
    /// Server connections opened.
    pub connects: AtomicU64,
    /// Failed attempts to open one.
    pub connect_errors: AtomicU64,
    /// Times the reserve pool was used.
    pub reserve_used: AtomicU64,
    /// Server sessions reset because a transaction ran something not proven free of session
    /// effects.
    pub resets: AtomicU64,
    /// Server connections held back from the pool until a cancel request toward them finished.
    pub cancel_holds: AtomicU64,
    /// Cancel requests dropped because the client had no query running on a server.
    pub cancels_dropped: AtomicU64,
}

/// Totals of a pool's traffic counters.
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct TrafficTotals {
    /// Transactions completed.
    pub xacts: u64,
    /// Requests completed.
    pub queries: u64,
    /// Bytes from clients.
    pub bytes_in: u64,
    /// Bytes to clients.
    pub bytes_out: u64,
    /// Microseconds in transactions.
    pub xact_us: u64,
    /// Microseconds in requests.
    pub query_us: u64,
    /// Microseconds waited for a connection.
    pub wait_us: u64,
}

impl std::ops::AddAssign<&TrafficTotals> for TrafficTotals {
    fn add_assign(&mut self, o: &TrafficTotals) {
        self.xacts += o.xacts;
        self.queries += o.queries;
        self.bytes_in += o.bytes_in;
        self.bytes_out += o.bytes_out;
        self.xact_us += o.xact_us;
        self.query_us += o.query_us;
        self.wait_us += o.wait_us;
    }
}

impl PoolStats {
    /// Notes the time a client waited for a connection.
    pub fn record_wait(&self, d: Duration) {
        self.traffic.local().wait_us.fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    /// Sums the shards.
    pub fn totals(&self) -> TrafficTotals {
        let mut t = TrafficTotals::default();
        for s in self.traffic.all() {
            t.xacts += s.xacts.load(Ordering::Relaxed);
            t.queries += s.queries.load(Ordering::Relaxed);
            t.bytes_in += s.bytes_in.load(Ordering::Relaxed);
            t.bytes_out += s.bytes_out.load(Ordering::Relaxed);
            t.xact_us += s.xact_us.load(Ordering::Relaxed);
            t.query_us += s.query_us.load(Ordering::Relaxed);
            t.wait_us += s.wait_us.load(Ordering::Relaxed);
        }
        t
    }
}

/// Latency histograms of one shard, in microseconds.
struct Histograms {
    xact: Histogram<u64>,
    query: [Histogram<u64>; 5],
    wait: Histogram<u64>,
    errors: BTreeMap<[u8; 2], u64>,
}

fn histogram() -> Histogram<u64> {
    // 1 us .. 1 h at 2 significant digits: ~1% error, a few kB.
    Histogram::new_with_bounds(1, 3_600_000_000, 2).expect("static histogram bounds are valid")
}

impl Default for Histograms {
    fn default() -> Self {
        Histograms {
            xact: histogram(),
            query: std::array::from_fn(|_| histogram()),
            wait: histogram(),
            errors: BTreeMap::new(),
        }
    }
}

/// Process-wide latency and error statistics.
#[derive(Default)]
pub struct Stats {
    hist: Sharded<Mutex<Histograms>>,
    /// Clients connected now.
    pub clients: AtomicU64,
    /// Clients that completed login since start.
    pub logins: AtomicU64,
    /// Logins refused (bad password, unknown database, too many clients, ...).
    pub login_failures: AtomicU64,
    /// Clients taken over from the process this one upgraded (no login of their own here).
    pub adopted: AtomicU64,
    /// Sessions pinned to a server, by reason.
    pub pins: Mutex<BTreeMap<&'static str, u64>>,
}

/// Index of a statement kind in the per-kind histograms.
pub fn kind_index(k: StatementKind) -> usize {
    match k {
        StatementKind::Select => 0,
        StatementKind::Insert => 1,
        StatementKind::Update => 2,
        StatementKind::Delete => 3,
        StatementKind::Other => 4,
    }
}

/// Statement kinds in histogram order, as metric labels.
pub const KIND_LABELS: [&str; 5] = ["select", "insert", "update", "delete", "other"];

impl Stats {
    fn with_local(&self, f: impl FnOnce(&mut Histograms)) {
        if let Ok(mut h) = self.hist.local().lock() {
            f(&mut h);
        }
    }

    /// One sample per transaction.
    pub fn record_xact(&self, d: Duration) {
        self.with_local(|h| h.xact.saturating_record(d.as_micros().max(1) as u64));
    }

    /// One sample per request, by the kind of its first statement.
    pub fn record_query(&self, kind: StatementKind, d: Duration) {
        self.with_local(|h| h.query[kind_index(kind)].saturating_record(d.as_micros().max(1) as u64));
    }

    /// One sample per pool wait.
    pub fn record_wait(&self, d: Duration) {
        self.with_local(|h| h.wait.saturating_record(d.as_micros().max(1) as u64));
    }

    /// Counts an error sent to a client by its SQLSTATE class.
    pub fn record_error(&self, sqlstate: &[u8]) {
        let class = [sqlstate.first().copied().unwrap_or(b'?'), sqlstate.get(1).copied().unwrap_or(b'?')];
        self.with_local(|h| *h.errors.entry(class).or_default() += 1);
    }

    /// Counts a session pinned to its server.
    pub fn record_pin(&self, reason: &'static str) {
        if let Ok(mut p) = self.pins.lock() {
            *p.entry(reason).or_default() += 1;
        }
    }

    /// Merged histograms: (transactions, per-kind queries, waits) and errors by class.
    pub fn merged(&self) -> MergedStats {
        let mut m = MergedStats {
            xact: histogram(),
            query: std::array::from_fn(|_| histogram()),
            wait: histogram(),
            errors: BTreeMap::new(),
        };
        for shard in self.hist.all() {
            let Ok(h) = shard.lock() else { continue };
            let _ = m.xact.add(&h.xact);
            for (dst, src) in m.query.iter_mut().zip(h.query.iter()) {
                let _ = dst.add(src);
            }
            let _ = m.wait.add(&h.wait);
            for (k, v) in &h.errors {
                *m.errors.entry(String::from_utf8_lossy(k).into_owned()).or_default() += v;
            }
        }
        m
    }
}

/// All shards merged.
pub struct MergedStats {
    /// Transaction latency (us).
    pub xact: Histogram<u64>,
    /// Request latency by statement kind (us).
    pub query: [Histogram<u64>; 5],
    /// Pool wait (us).
    pub wait: Histogram<u64>,
    /// Errors sent to clients by SQLSTATE class.
    pub errors: BTreeMap<String, u64>,
}

/// Serializes a Duration as fractional seconds.
pub fn ser_secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}
