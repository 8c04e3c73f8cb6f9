//! A promotion drill under a TPC-B-like write load: eight clients through pgshift, the primary
//! killed (SIGKILL) and its replica promoted with `pg_ctl promote`, once with asynchronous and once
//! with synchronous replication; then the old primary started again unrewound (split brain). Only
//! correctness is asserted; the timings and counts are printed.

mod common;

use common::{proxy, PrivateCluster};
use pgshift::proxy::Proxy;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_postgres::Client;

/// Concurrent clients, as in `pgbench -c 8`.
const CLIENTS: i64 = 8;
/// Branches; 10 tellers and 1,000 accounts per branch, as pgbench lays them out (scaled down).
const BRANCHES: i64 = 4;
/// No single statement or login may take this long: past `failover_timeout` (20 s here), so only
/// a hang reaches it.
const HANG: Duration = Duration::from_secs(45);
/// History ids written after the old primary came back start here.
const MARKER: i64 = 9_000_000_000;

/// Where a client was when an error reached it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Logging in through pgshift.
    Connect,
    /// BEGIN up to the history insert.
    Body,
    /// COMMIT sent.
    Commit,
}

/// One error a client saw.
#[derive(Debug)]
struct Failure {
    stage: Stage,
    /// The SQLSTATE, or "closed" when the connection ended without one.
    code: String,
    message: String,
    at: Instant,
}

/// What one client did.
#[derive(Debug, Default)]
struct Load {
    /// History ids of acknowledged commits, with when the acknowledgement came.
    acked: Vec<(i64, Instant)>,
    failures: Vec<Failure>,
    /// History ids whose COMMIT got no answer (the outcome is unknown to the client).
    ambiguous: Vec<i64>,
}

fn failure(stage: Stage, e: &tokio_postgres::Error) -> Failure {
    let code = e.code().map_or_else(|| "closed".to_string(), |c| c.code().to_string());
    let message = e.as_db_error().map_or_else(|| e.to_string(), |d| d.message().to_string());
    Failure { stage, code, message, at: Instant::now() }
}

/// Runs one statement, panicking if it hangs.
async fn run(c: &Client, sql: &str) -> Result<(), tokio_postgres::Error> {
    match tokio::time::timeout(HANG, c.simple_query(sql)).await {
        Ok(r) => r.map(|_| ()),
        Err(_) => panic!("a statement hung for {HANG:?}: {sql}"),
    }
}

/// One TPC-B-like transaction (pgbench's built-in script) writing history row `hid`.
async fn tpcb(c: &Client, hid: i64, rnd: &mut u64) -> Result<(), (Stage, tokio_postgres::Error)> {
    let mut next = |n: i64| {
        *rnd ^= *rnd << 13;
        *rnd ^= *rnd >> 7;
        *rnd ^= *rnd << 17;
        (*rnd % n as u64) as i64 + 1
    };
    let (aid, tid, bid, delta) = (next(BRANCHES * 1000), next(BRANCHES * 10), next(BRANCHES), next(10_000) - 5_000);
    let body = [
        "begin".to_string(),
        format!("update drill_accounts set abalance = abalance + {delta} where aid = {aid}"),
        format!("select abalance from drill_accounts where aid = {aid}"),
        format!("update drill_tellers set tbalance = tbalance + {delta} where tid = {tid}"),
        format!("update drill_branches set bbalance = bbalance + {delta} where bid = {bid}"),
        format!(
            "insert into drill_history (hid, tid, bid, aid, delta, mtime) values ({hid}, {tid}, {bid}, {aid}, {delta}, now())"
        ),
    ];
    for sql in &body {
        run(c, sql).await.map_err(|e| (Stage::Body, e))?;
    }
    run(c, "commit").await.map_err(|e| (Stage::Commit, e))
}

/// A client: TPC-B transactions until `stop`, reconnecting (as an application's pool does) when
/// its connection ends.
async fn client(w: i64, port: u16, stop: Arc<AtomicBool>) -> Load {
    let mut load = Load::default();
    let mut conn: Option<Client> = None;
    let mut rnd = 0x9E37_79B9_7F4A_7C15_u64 ^ (w as u64 + 1);
    let mut seq = 0i64;
    while !stop.load(Ordering::Relaxed) {
        let c = match conn.take() {
            Some(c) if !c.is_closed() => c,
            _ => match tokio::time::timeout(HANG, common::try_connect(port, "app", "app", "app")).await {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => {
                    load.failures.push(failure(Stage::Connect, &e));
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                Err(_) => panic!("a login through pgshift hung for {HANG:?}"),
            },
        };
        let hid = w * 1_000_000_000 + seq;
        seq += 1;
        match tpcb(&c, hid, &mut rnd).await {
            Ok(()) => {
                load.acked.push((hid, Instant::now()));
                conn = Some(c);
            }
            Err((stage, e)) => {
                let f = failure(stage, &e);
                if stage == Stage::Commit && (f.code == "closed" || f.code.starts_with("08") || f.code == "57P01") {
                    load.ambiguous.push(hid);
                }
                load.failures.push(f);
                // Keep the connection only if it is still usable and the transaction is ended.
                if !c.is_closed() && e.code().is_some() && run(&c, "rollback").await.is_ok() {
                    conn = Some(c);
                }
            }
        }
    }
    load
}

async fn create_tables(port: u16) {
    let c = common::connect(port, "app", "app", "app").await;
    let accounts = BRANCHES * 1000;
    let tellers = BRANCHES * 10;
    c.batch_execute(&format!(
        "drop table if exists drill_history, drill_accounts, drill_tellers, drill_branches;
         create table drill_branches (bid int primary key, bbalance int not null);
         create table drill_tellers (tid int primary key, bid int not null, tbalance int not null);
         create table drill_accounts (aid int primary key, bid int not null, abalance int not null);
         create table drill_history (hid bigint primary key, tid int, bid int, aid int, delta int, mtime timestamp);
         insert into drill_branches select g, 0 from generate_series(1, {BRANCHES}) g;
         insert into drill_tellers select g, (g - 1) / 10 + 1, 0 from generate_series(1, {tellers}) g;
         insert into drill_accounts select g, (g - 1) / 1000 + 1, 0 from generate_series(1, {accounts}) g;"
    ))
    .await
    .expect("create the TPC-B tables");
}

/// Waits until the replica at `port` has the tables (replayed their creation).
async fn wait_replicated(port: u16) {
    let c = common::connect(port, "app", "app", "app").await;
    for _ in 0..200 {
        let q = "select count(*) from pg_class where relname = 'drill_accounts'";
        let n: i64 = c.query_one(q, &[]).await.expect("count on the replica").get(0);
        if n == 1 && c.query("select 1 from drill_accounts where aid = 1", &[]).await.is_ok_and(|r| r.len() == 1) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the replica did not replay the drill tables within 10 s");
}

/// GET /ready on pgshift's admin port: the HTTP status.
async fn ready_status(p: &Proxy) -> u16 {
    let addr = p.admin_addr.clone().expect("the test config enables the admin port");
    let mut s = tokio::net::TcpStream::connect(&addr).await.expect("connect to the admin port");
    let req = "GET /ready HTTP/1.1\r\nHost: pgshift\r\nConnection: close\r\n\r\n";
    s.write_all(req.as_bytes()).await.expect("send GET /ready");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.expect("read the /ready answer");
    let text = String::from_utf8_lossy(&raw);
    text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).expect("an HTTP status")
}

/// The drill's timeline, for the figures.
struct Clock {
    kill_sent: Instant,
    promoted: Instant,
}

/// Starts the load, kills the primary, promotes the replica, runs the load 3 s more; returns
/// every client's record.
async fn drill_load(cluster: &Arc<PrivateCluster>, port: u16) -> (Vec<Load>, Clock) {
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..CLIENTS).map(|w| tokio::spawn(client(w, port, stop.clone()))).collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let kill_sent = Instant::now();
    let cl = cluster.clone();
    tokio::task::spawn_blocking(move || cl.kill_node(0)).await.expect("kill the primary");
    // An orchestrator's detection time, shortened.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cl = cluster.clone();
    tokio::task::spawn_blocking(move || cl.promote_node(1)).await.expect("promote the replica");
    let promoted = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    let mut loads = Vec::new();
    for w in workers {
        loads.push(w.await.expect("a client task panicked"));
    }
    (loads, Clock { kill_sent, promoted })
}

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

/// Prints the figures and asserts what must hold for every client: errors only of the
/// connection-loss kinds, only after the kill, at most two per client; writes again after the
/// promotion.
fn check_clients(label: &str, loads: &[Load], clock: &Clock) {
    let mut stall = Duration::ZERO;
    let mut back = Vec::new();
    for (w, l) in loads.iter().enumerate() {
        let mut last: Option<Instant> = None;
        for (_, at) in &l.acked {
            if let Some(prev) = last {
                stall = stall.max(at.saturating_duration_since(prev));
            }
            last = Some(*at);
        }
        let first_after = l.acked.iter().find(|(_, at)| *at > clock.promoted);
        let first_after =
            first_after.unwrap_or_else(|| panic!("{label}: client {w} wrote nothing after the promotion"));
        back.push(first_after.1.saturating_duration_since(clock.promoted));
        assert!(l.failures.len() <= 2, "{label}: client {w} saw more errors than a cut transaction: {:?}", l.failures);
        for f in &l.failures {
            let connection_loss = f.code == "closed" || f.code.starts_with("08") || f.code == "57P01";
            assert!(connection_loss, "{label}: client {w} got {} ({}) at {:?}", f.code, f.message, f.stage);
            assert!(f.at >= clock.kill_sent, "{label}: client {w} got an error before the kill: {f:?}");
        }
    }
    let failures: Vec<_> = loads.iter().flat_map(|l| &l.failures).collect();
    let acked: usize = loads.iter().map(|l| l.acked.len()).sum();
    let first = back.iter().min().copied().unwrap_or_default();
    let all = back.iter().max().copied().unwrap_or_default();
    eprintln!("{label}: {acked} commits acknowledged, {} failed transactions or logins:", failures.len());
    for f in &failures {
        eprintln!(
            "{label}:   {:?} {} {} (+{} ms after the kill)",
            f.stage,
            f.code,
            f.message,
            ms(f.at - clock.kill_sent)
        );
    }
    eprintln!(
        "{label}: promote -> first acknowledged write {} ms, every client writing {} ms; longest stall {} ms; \
         kill -> promote returned {} ms",
        ms(first),
        ms(all),
        ms(stall),
        ms(clock.promoted - clock.kill_sent)
    );
}

/// How many of the history ids `ids` the server behind `c` has.
async fn count_ids(c: &Client, ids: &[i64]) -> i64 {
    let q = "select count(*) from drill_history where hid = any($1)";
    c.query_one(q, &[&ids]).await.expect("count history ids").get(0)
}

/// All history rows on the server behind `c`.
async fn count_rows(c: &Client) -> i64 {
    c.query_one("select count(*) from drill_history", &[]).await.expect("count history rows").get(0)
}

/// Acknowledged commits missing on the promoted node, and how many ambiguous ones it has.
async fn count_lost(label: &str, loads: &[Load], new_primary: u16) -> i64 {
    let c = common::connect(new_primary, "app", "app", "app").await;
    let acked: Vec<i64> = loads.iter().flat_map(|l| l.acked.iter().map(|(id, _)| *id)).collect();
    let ambiguous: Vec<i64> = loads.iter().flat_map(|l| l.ambiguous.iter().copied()).collect();
    let (n_acked, n_amb) = (acked.len() as i64, ambiguous.len());
    let lost = n_acked - count_ids(&c, &acked).await;
    let amb_there = count_ids(&c, &ambiguous).await;
    eprintln!("{label}: lost acknowledged commits {lost}; ambiguous commits {n_amb} ({amb_there} of them on the promoted node)");
    lost
}

/// The old primary comes back unrewound, out of recovery on its old timeline: pgshift keeps the
/// promoted node and sends the old one nothing.
async fn check_split_brain(label: &str, p: &Proxy, cluster: &Arc<PrivateCluster>) {
    let cl = cluster.clone();
    tokio::task::spawn_blocking(move || cl.start_node(0)).await.expect("restart the old primary");
    let old = common::connect(cluster.port(0), "app", "app", "app").await;
    let before = count_rows(&old).await;
    let old_addr = format!(":{}", cluster.port(0));
    for _ in 0..200 {
        let rt = p.shared.runtime.load();
        if rt.replicas.iter().any(|b| b.address.ends_with(&old_addr) && b.health.up.load(Ordering::Relaxed)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let c = common::connect(proxy::port(p), "app", "app", "app").await;
    for i in 0..50 {
        c.execute("insert into drill_history (hid) values ($1)", &[&(MARKER + i)])
            .await
            .expect("a write after the restart");
    }
    let through: i64 =
        c.query_one("select count(*) from drill_history where hid >= $1", &[&MARKER]).await.expect("read back").get(0);
    let written_on_old = count_rows(&old).await - before;
    let primary = p.shared.runtime.load().primary.address.clone();
    let ready = ready_status(p).await;
    eprintln!("{label}: old primary back: rows written on it since {written_on_old}; pgshift's primary {primary}; /ready {ready}");
    assert_eq!(through, 50, "{label}: the writes after the restart read back through pgshift");
    assert_eq!(written_on_old, 0, "{label}: writes reached the old primary");
    assert!(primary.ends_with(&format!(":{}", cluster.port(1))), "{label}: pgshift's primary is {primary}");
}

async fn drill(synchronous: bool) {
    let label = if synchronous { "drill (synchronous)" } else { "drill (asynchronous)" };
    let cluster = Arc::new(tokio::task::spawn_blocking(|| PrivateCluster::start(1)).await.expect("start the cluster"));
    let cl = cluster.clone();
    tokio::task::spawn_blocking(move || cl.set_synchronous_replica(synchronous.then_some(1)))
        .await
        .expect("set the replication mode");
    create_tables(cluster.primary_port()).await;
    wait_replicated(cluster.port(1)).await;
    let mut cfg = proxy::config(cluster.primary_port(), cluster.replica_ports());
    cfg.proxy.default_pool_size = 10;
    cfg.routing.failover_timeout = pgshift::config::Dur::secs(20);
    let p = proxy::start(cfg).await;
    proxy::wait_healthy(&p).await;

    let (loads, clock) = drill_load(&cluster, proxy::port(&p)).await;
    check_clients(label, &loads, &clock);
    let f = p.shared.failovers();
    assert!(f.count.load(Ordering::Relaxed) >= 1, "{label}: pgshift made no failover");
    eprintln!(
        "{label}: pgshift's failover took {} ms (primary's first failed probe -> switch)",
        f.last_duration_ms.load(Ordering::Relaxed)
    );
    let lost = count_lost(label, &loads, cluster.port(1)).await;
    if synchronous {
        assert_eq!(lost, 0, "{label}: acknowledged commits lost under synchronous replication");
    }
    check_split_brain(label, &p, &cluster).await;
    drop(p);
    drop(cluster);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promotion_under_tpcb_load_with_asynchronous_replication() {
    drill(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promotion_under_tpcb_load_with_synchronous_replication() {
    drill(true).await;
}
