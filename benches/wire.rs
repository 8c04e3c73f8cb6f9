//! Micro-benchmarks of pgshift's per-message hot path: framing, request boundaries, SQL
//! classification (cold and cached) and the queue of owed replies.
//!
//! `cargo bench --bench wire` runs them under criterion (ns per op). For instruction counts (stable
//! on a noisy machine) `bench/instructions.sh` runs the same operations a fixed number of times,
//! without criterion, under callgrind or `perf stat`:
//!
//! - `BENCH_LIST=1 wire-<hash>` prints `name elements` for every operation;
//! - `BENCH_ONESHOT=<name> BENCH_ITERS=<n> wire-<hash>` runs one operation n times and exits.

use std::hint::black_box;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use criterion::{Criterion, Throughput};

use pgshift::client::expect::{Expect, ExpectQueue, Synth};
use pgshift::client::request::scan;
use pgshift::router::{classify, ClassifierCache, ClassifierConfig};
use pgshift::wire::frame::{complete_frame, peek_header};
use pgshift::wire::messages;

/// pgbench -S's statement (simple protocol: the literal is inlined, one text per aid).
const PGBENCH_SELECT: &str = "SELECT abalance FROM pgbench_accounts WHERE aid = 42817;";
/// pgbench -S's statement as -M extended / prepared send it.
const PGBENCH_SELECT_PARAM: &str = "SELECT abalance FROM pgbench_accounts WHERE aid = $1;";
/// An ORM-style read: quoted identifiers, joins, IN list, ORDER BY, LIMIT/OFFSET, parameters.
const ORM_SELECT: &str = r#"SELECT "orders"."id", "orders"."customer_id", "orders"."status", "orders"."total_cents", "orders"."created_at", "customers"."email", "customers"."name" FROM "orders" INNER JOIN "customers" ON ("orders"."customer_id" = "customers"."id") LEFT OUTER JOIN "shipments" ON ("shipments"."order_id" = "orders"."id") WHERE ("orders"."status" IN ($1, $2, $3) AND "orders"."created_at" >= $4 AND "customers"."deleted_at" IS NULL) ORDER BY "orders"."created_at" DESC, "orders"."id" DESC LIMIT $5 OFFSET $6"#;

/// DataRows in the framing buffer (a result set as the server streams it).
const ROWS: usize = 100;

// ---- frame builders ------------------------------------------------------------------------------

fn frame(out: &mut BytesMut, tag: u8, body: &[u8]) {
    out.put_u8(tag);
    out.put_u32(body.len() as u32 + 4);
    out.put_slice(body);
}

/// A DataRow like a pgbench_accounts row: aid, bid, abalance, filler (84 chars).
fn data_row(out: &mut BytesMut, i: usize) {
    let aid = i.to_string();
    let filler = " ".repeat(84);
    let cols: [&[u8]; 4] = [aid.as_bytes(), b"1", b"0", filler.as_bytes()];
    let mut body = BytesMut::new();
    body.put_u16(cols.len() as u16);
    for c in cols {
        body.put_i32(c.len() as i32);
        body.put_slice(c);
    }
    frame(out, b'D', &body);
}

fn data_rows() -> BytesMut {
    let mut b = BytesMut::new();
    for i in 0..ROWS {
        data_row(&mut b, 1_000_000 + i);
    }
    b
}

fn cstr(b: &mut BytesMut, s: &str) {
    b.put_slice(s.as_bytes());
    b.put_u8(0);
}

fn parse(out: &mut BytesMut, name: &str, sql: &str) {
    let mut b = BytesMut::new();
    cstr(&mut b, name);
    cstr(&mut b, sql);
    b.put_u16(0);
    frame(out, b'P', &b);
}

fn bind(out: &mut BytesMut, stmt: &str, value: &str) {
    let mut b = BytesMut::new();
    cstr(&mut b, ""); // portal
    cstr(&mut b, stmt);
    b.put_u16(0); // parameter formats: all text
    b.put_u16(1);
    b.put_i32(value.len() as i32);
    b.put_slice(value.as_bytes());
    b.put_u16(0); // result formats: all text
    frame(out, b'B', &b);
}

fn describe_portal(out: &mut BytesMut) {
    frame(out, b'D', b"P\0");
}

fn execute(out: &mut BytesMut) {
    frame(out, b'E', b"\0\0\0\0\0");
}

fn sync(out: &mut BytesMut) {
    frame(out, b'S', b"");
}

/// pgbench -M simple: one Query.
fn simple_request() -> BytesMut {
    let mut b = BytesMut::new();
    messages::put_query(&mut b, PGBENCH_SELECT);
    b
}

/// pgbench -M extended: Parse (unnamed), Bind, Describe portal, Execute, Sync.
fn extended_request() -> BytesMut {
    let mut b = BytesMut::new();
    parse(&mut b, "", PGBENCH_SELECT_PARAM);
    bind(&mut b, "", "42817");
    describe_portal(&mut b);
    execute(&mut b);
    sync(&mut b);
    b
}

/// pgbench -M prepared after the first transaction: Bind P_0, Describe portal, Execute, Sync.
fn prepared_request() -> BytesMut {
    let mut b = BytesMut::new();
    bind(&mut b, "P_0", "42817");
    describe_portal(&mut b);
    execute(&mut b);
    sync(&mut b);
    b
}

// ---- operations ----------------------------------------------------------------------------------
// Each returns the closure that criterion times and that the one-shot mode repeats.

fn op_peek_header() -> impl FnMut() -> usize {
    let buf = data_rows();
    move || peek_header(black_box(&buf[..])).ok().flatten().map_or(0, |(_, n)| n)
}

fn op_complete_frame_rows() -> impl FnMut() -> usize {
    let buf = data_rows();
    move || {
        let buf = black_box(&buf[..]);
        let mut at = 0;
        let mut n = 0;
        while let Ok(Some((tag, total))) = complete_frame(&buf[at..]) {
            n += usize::from(tag == b'D');
            at += total;
        }
        n
    }
}

fn op_scan(req: BytesMut) -> impl FnMut() -> usize {
    move || scan(black_box(&req[..]), usize::MAX).ok().flatten().map_or(0, |r| r.len)
}

fn op_classify_cold(sql: &'static str) -> impl FnMut() -> usize {
    let cfg = ClassifierConfig::default();
    move || classify(black_box(sql), &cfg).statements.len()
}

fn op_classify_cached(sql: &'static str) -> impl FnMut() -> usize {
    let cfg = ClassifierConfig::default();
    let cache = ClassifierCache::new(4096);
    cache.classify(sql, &cfg);
    move || cache.classify(black_box(sql), &cfg).statements.len()
}

/// pgbench -S -M simple through the cache: every text is new (the aid is inlined), so each lookup
/// misses, classifies and inserts (evicting a shard now and then), as on pgshift's hot path with
/// replicas. Same capacity as the proxy's cache (16,384, cleared shard by shard when full); 100,000
/// distinct texts cycled.
fn op_classify_cache_miss() -> impl FnMut() -> usize {
    let cfg = ClassifierConfig::default();
    let cache = ClassifierCache::new(16_384);
    let texts: Vec<String> =
        (0..100_000).map(|i| format!("SELECT abalance FROM pgbench_accounts WHERE aid = {};", 1 + i * 7)).collect();
    // Past the capacity once, so every shard has filled and been cleared: the steady state.
    for t in &texts[..20_000] {
        cache.classify(t, &cfg);
    }
    let mut i = 20_000;
    move || {
        i = (i + 1) % texts.len();
        cache.classify(black_box(&texts[i]), &cfg).statements.len()
    }
}

/// What one extended-protocol request owes: push its five entries, then pop them as replies come.
fn op_expect_extended() -> impl FnMut() -> usize {
    let mut q = ExpectQueue::default();
    move || {
        q.push(Expect::Parse { stmt: None });
        q.push(Expect::Bind { stmt: None });
        q.push(Expect::Describe);
        q.push(Expect::Execute);
        q.push(Expect::Sync);
        let mut n = 0;
        while let Some(e) = q.pop() {
            n += usize::from(black_box(e) == Expect::Sync);
        }
        n
    }
}

/// Proxy-made replies (a locally answered Parse, then ReadyForQuery) emitted into the client buffer.
fn op_expect_emit() -> impl FnMut() -> usize {
    let mut q = ExpectQueue::default();
    let mut out = BytesMut::with_capacity(256);
    move || {
        out.clear();
        q.push(Expect::Synthetic(Synth::ParseComplete));
        q.push(Expect::Synthetic(Synth::CloseComplete));
        q.push(Expect::Synthetic(Synth::Ready));
        black_box(q.emit_synthetic(&mut out, pgshift::wire::TxStatus::Idle));
        out.len()
    }
}

/// Every operation once: (group, name, elements per op, closure factory). Listed in one place so
/// criterion and the one-shot mode run exactly the same code.
macro_rules! for_each_op {
    ($m:ident) => {
        $m! {
            ("frame", "peek_header", 1, op_peek_header()),
            ("frame", "complete_frame_100_datarows", ROWS as u64, op_complete_frame_rows()),
            ("request", "scan_simple_query", 1, op_scan(simple_request())),
            ("request", "scan_extended_batch", 1, op_scan(extended_request())),
            ("request", "scan_prepared_batch", 1, op_scan(prepared_request())),
            ("classify", "cold_pgbench_select", 1, op_classify_cold(PGBENCH_SELECT)),
            ("classify", "cold_orm_select", 1, op_classify_cold(ORM_SELECT)),
            ("classify", "cached_pgbench_select", 1, op_classify_cached(PGBENCH_SELECT)),
            ("classify", "cached_orm_select", 1, op_classify_cached(ORM_SELECT)),
            ("classify", "cache_miss_pgbench_simple", 1, op_classify_cache_miss()),
            ("expect", "push_pop_extended_5", 5, op_expect_extended()),
            ("expect", "emit_synthetic_3", 3, op_expect_emit()),
        }
    };
}

macro_rules! criterion_all {
    ($(($group:expr, $name:expr, $elems:expr, $op:expr)),* $(,)?) => {
        fn benches(c: &mut Criterion) {
            $({
                let mut g = c.benchmark_group($group);
                g.throughput(Throughput::Elements($elems));
                g.bench_function($name, |b| b.iter($op));
                g.finish();
            })*
        }
    };
}
for_each_op!(criterion_all);

macro_rules! list_all {
    ($(($group:expr, $name:expr, $elems:expr, $op:expr)),* $(,)?) => {
        fn list() {
            $(println!("{}/{} {}", $group, $name, $elems);)*
        }
    };
}
for_each_op!(list_all);

macro_rules! oneshot_all {
    ($(($group:expr, $name:expr, $elems:expr, $op:expr)),* $(,)?) => {
        fn oneshot(which: &str, iters: u64) -> bool {
            $(
                if which == concat!($group, "/", $name) {
                    let mut f = $op;
                    for _ in 0..iters {
                        black_box(f());
                    }
                    return true;
                }
            )*
            false
        }
    };
}
for_each_op!(oneshot_all);

fn main() {
    if std::env::var_os("BENCH_LIST").is_some() {
        list();
        return;
    }
    if let Ok(which) = std::env::var("BENCH_ONESHOT") {
        let iters = std::env::var("BENCH_ITERS").ok().and_then(|s| s.parse().ok()).unwrap_or(10_000);
        if !oneshot(&which, iters) {
            eprintln!("unknown benchmark {which}; BENCH_LIST=1 lists them");
            std::process::exit(2);
        }
        return;
    }
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    benches(&mut c);
    c.final_summary();
}
