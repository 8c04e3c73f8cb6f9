//! What recording one transaction costs on the hot path: `Stats::record_xact` + `record_query`
//! + the pool's traffic counters, as `Session::release` and the reply path do it.
//!
//! Run with `cargo bench --bench stats`. "2 threads" runs the same loop on two threads at once
//! (each on its own shard) and reports the time per transaction per thread, so contention on a
//! shared cache line would show up as a higher number than the single-threaded one.

use criterion::{criterion_group, criterion_main, Criterion};
use std::hint::black_box;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use pgshift::router::StatementKind;
use pgshift::stats::{PoolStats, Stats};

/// One transaction's worth of recording, exactly the calls the session makes.
fn record_transaction(stats: &Stats, pool: &PoolStats, i: u64) {
    let xact = Duration::from_micros(200 + (i & 1023));
    let query = Duration::from_micros(150 + (i & 511));
    stats.record_query(StatementKind::Select, black_box(query));
    let t = pool.traffic.local();
    t.queries.fetch_add(1, Ordering::Relaxed);
    t.query_us.fetch_add(query.as_micros() as u64, Ordering::Relaxed);
    stats.record_xact(black_box(xact));
    t.xacts.fetch_add(1, Ordering::Relaxed);
    t.xact_us.fetch_add(xact.as_micros() as u64, Ordering::Relaxed);
    t.bytes_in.fetch_add(black_box(120), Ordering::Relaxed);
    t.bytes_out.fetch_add(black_box(480), Ordering::Relaxed);
}

fn bench(c: &mut Criterion) {
    let stats = Arc::new(Stats::default());
    let pool = Arc::new(PoolStats::default());
    let mut i = 0u64;
    c.bench_function("record transaction, 1 thread", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            record_transaction(&stats, &pool, i)
        })
    });
    c.bench_function("record transaction, 2 threads (per thread)", |b| {
        b.iter_custom(|iters| {
            let barrier = Barrier::new(2);
            std::thread::scope(|s| {
                let runs: Vec<_> = (0..2)
                    .map(|_| {
                        s.spawn(|| {
                            barrier.wait();
                            let started = Instant::now();
                            for i in 0..iters {
                                record_transaction(&stats, &pool, i);
                            }
                            started.elapsed()
                        })
                    })
                    .collect();
                runs.into_iter().map(|h| h.join().unwrap_or_default()).max().unwrap_or_default()
            })
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
