//! Role discovery and failover against real PostgreSQL: a primary and a streaming replica, the
//! primary killed under a write load and the replica promoted with `pg_ctl promote`; then the old
//! primary started again on its old timeline (split-brain material) and kept away from writes.

mod common;

use common::{proxy, until};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promoted_replica_takes_the_writes_and_the_old_primary_gets_none() {
    let cluster = Arc::new(tokio::task::spawn_blocking(|| common::PrivateCluster::start(1)).await.unwrap());
    let mut cfg = proxy::config(cluster.primary_port(), cluster.replica_ports());
    cfg.proxy.default_pool_size = 4;
    cfg.routing.failover_timeout = pgshift::config::Dur::secs(30);
    let p = proxy::start(cfg).await;
    proxy::wait_healthy(&p).await;
    let port = proxy::port(&p);
    let c = common::connect(port, "app", "app", "app").await;
    c.batch_execute(
        "drop table if exists fo_t; create table fo_t (id bigint primary key, at timestamptz default now())",
    )
    .await
    .unwrap();

    // Writers: each commit that was acknowledged is remembered.
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    let t0 = Instant::now();
    for w in 0..3i64 {
        let stop = stop.clone();
        let mut c = common::connect(port, "app", "app", "app").await;
        workers.push(tokio::spawn(async move {
            let (mut acked, mut errors, mut closed) = (Vec::new(), Vec::new(), 0usize);
            let mut i = 0i64;
            while !stop.load(Ordering::Relaxed) {
                let id = w * 1_000_000 + i;
                i += 1;
                match tokio::time::timeout(
                    Duration::from_secs(40),
                    c.execute("insert into fo_t (id) values ($1)", &[&id]),
                )
                .await
                {
                    Ok(Ok(_)) => acked.push((id, Instant::now())),
                    Ok(Err(e)) => {
                        // A transaction cut by the primary's death ends its client's connection
                        // (the server's FATAL reaches it); the next call on it says "closed":
                        // reconnect, as an application pool does.
                        match e.as_db_error() {
                            Some(db) => errors.push(format!(
                                "{} {} (at {} ms)",
                                db.code().code(),
                                db.message(),
                                t0.elapsed().as_millis()
                            )),
                            None => closed += 1,
                        }
                        if c.is_closed() || e.code().is_none() {
                            c = common::connect(port, "app", "app", "app").await;
                        }
                    }
                    Err(_) => panic!("a write hung for 40 s"),
                }
            }
            assert!(closed <= 1, "a writer's connection closed {closed} times");
            (acked, errors)
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let cl = cluster.clone();
    tokio::task::spawn_blocking(move || cl.kill_node(0)).await.unwrap();
    eprintln!("killed the primary at {} ms", t0.elapsed().as_millis());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cl = cluster.clone();
    tokio::task::spawn_blocking(move || cl.promote_node(1)).await.unwrap();
    let promoted = Instant::now();
    eprintln!("promoted the replica at {} ms", t0.elapsed().as_millis());
    // Long enough for every writer to be through, even on a loaded machine (no timing asserted).
    let probe = common::connect(port, "app", "app", "app").await;
    probe.execute("insert into fo_t (id) values (-1)", &[]).await.expect("a write after the promotion");
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let mut acked = Vec::new();
    let mut errors = Vec::new();
    let mut first_after = Vec::new();
    for w in workers {
        let (a, e) = w.await.unwrap();
        if let Some((_, t)) = a.iter().find(|(_, t)| *t > promoted) {
            first_after.push(t.saturating_duration_since(promoted));
        }
        acked.extend(a.into_iter().map(|(id, _)| id));
        errors.extend(e);
    }
    eprintln!("acked {} writes, client errors {errors:?}, first write after promote {first_after:?}", acked.len());
    assert_eq!(first_after.len(), 3, "every writer wrote again after the promotion");
    assert!(p.shared.failovers().count.load(Ordering::Relaxed) >= 1);
    // Errors: only the transactions in flight on the dead primary (at most one per writer).
    assert!(errors.len() <= 3, "errors beyond the in-flight transactions: {errors:?}");
    assert!(errors.iter().all(|c| c.starts_with("08006 ") || c.starts_with("57P01 ")), "{errors:?}");

    // Commits acknowledged through pgshift are on the new primary (asynchronous replication can
    // lose the last ones, as it would for a direct client: count them).
    let c = common::connect(port, "app", "app", "app").await;
    let n: i64 = c.query_one("select count(*) from fo_t where id = any($1)", &[&acked]).await.unwrap().get(0);
    let after: Vec<_> = first_after.iter().map(|d| d.as_millis()).collect();
    eprintln!(
        "failover drill: first write after promote (ms) {after:?}, errors {}, lost {}",
        errors.len(),
        acked.len() as i64 - n
    );
    eprintln!("lost commits (asynchronous replication): {}", acked.len() as i64 - n);

    // The old primary comes back, out of recovery on its old timeline: it gets no writes.
    let cl = cluster.clone();
    tokio::task::spawn_blocking(move || cl.start_node(0)).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    for i in 0..50i64 {
        c.execute("insert into fo_t (id) values ($1)", &[&(9_000_000 + i)]).await.unwrap();
    }
    let old = common::connect(cluster.port(0), "app", "app", "app").await;
    let on_old: i64 = old.query_one("select count(*) from fo_t where id >= 9000000", &[]).await.unwrap().get(0);
    assert_eq!(on_old, 0, "writes reached the old primary");
    let new_tl = p.shared.runtime.load().primary.address.clone();
    assert!(new_tl.ends_with(&format!(":{}", cluster.port(1))), "primary is {new_tl}");
    drop(p);
    drop(cluster);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declared_roles_stay_when_discovery_is_off() {
    let cluster = Arc::new(tokio::task::spawn_blocking(|| common::PrivateCluster::start(1)).await.unwrap());
    let mut cfg = proxy::config(cluster.primary_port(), cluster.replica_ports());
    cfg.routing.role_discovery = false;
    let p = proxy::start(cfg).await;
    proxy::wait_healthy(&p).await;
    let cl = cluster.clone();
    tokio::task::spawn_blocking(move || cl.kill_node(0)).await.unwrap();
    let cl = cluster.clone();
    tokio::task::spawn_blocking(move || cl.promote_node(1)).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(p.shared.failovers().count.load(Ordering::Relaxed), 0);
    assert!(p.shared.runtime.load().primary.address.ends_with(&format!(":{}", cluster.port(0))));
    drop(p);
    drop(cluster);
}

/// Creates `table` through `c` and waits for it on the replica; then kills the primary (node 0),
/// promotes node 1, waits for discovery to follow, and starts node 0 again: out of recovery on
/// its old timeline, never rewound.
async fn fail_over_leaving_the_old_primary_on_its_timeline(
    cluster: &Arc<common::PrivateCluster>,
    p: &pgshift::proxy::Proxy,
    c: &tokio_postgres::Client,
    table: &str,
) {
    c.batch_execute(&format!("create table {table}(id int)")).await.unwrap();
    let (replica, probe) = (cluster.port(1), format!("select 1 from {table}"));
    until("the table reaching the replica", || common::psql(replica, "app", "app", "app", &probe).status.success())
        .await;
    let cl = cluster.clone();
    tokio::task::spawn_blocking(move || cl.kill_node(0)).await.unwrap();
    let cl = cluster.clone();
    tokio::task::spawn_blocking(move || cl.promote_node(1)).await.unwrap();
    let new = format!(":{}", cluster.port(1));
    until("discovery switching to the promoted node", || p.shared.runtime.load().primary.address.ends_with(&new)).await;
    let cl = cluster.clone();
    tokio::task::spawn_blocking(move || cl.start_node(0)).await.unwrap();
}

/// A one-replica cluster that failed over (see above) behind a proxy probing every 3 s, with the
/// config the proxy started from: it still names the old primary first.
async fn failed_over_with_the_old_primary_back(
    table: &str,
) -> (Arc<common::PrivateCluster>, pgshift::config::Config, pgshift::proxy::Proxy) {
    let cluster = Arc::new(tokio::task::spawn_blocking(|| common::PrivateCluster::start(1)).await.unwrap());
    let mut cfg = proxy::config(cluster.primary_port(), cluster.replica_ports());
    cfg.routing.health_check_interval = pgshift::config::Dur::secs(3);
    let p = proxy::start(cfg.clone()).await;
    proxy::wait_healthy(&p).await;
    let c = common::connect(proxy::port(&p), "app", "app", "app").await;
    fail_over_leaving_the_old_primary_on_its_timeline(&cluster, &p, &c, table).await;
    (cluster, cfg, p)
}

/// Rows of `table` on node 0, the old primary, read directly.
async fn rows_on_old_primary(cluster: &common::PrivateCluster, table: &str) -> i64 {
    let old = common::connect(cluster.port(0), "app", "app", "app").await;
    old.query_one(&format!("select count(*) from {table}"), &[]).await.unwrap().get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_on_the_old_primary_writes_nothing_there_after_a_promotion() {
    // The replica is promoted while the old primary runs on (an orchestrator acting on a
    // partition pgshift does not see): discovery follows the higher timeline, and a client that
    // kept its server connection (session mode) must not go on writing to the old primary.
    let cluster = Arc::new(tokio::task::spawn_blocking(|| common::PrivateCluster::start(1)).await.unwrap());
    let mut cfg = proxy::config(cluster.primary_port(), cluster.replica_ports());
    cfg.proxy.pool_mode = pgshift::config::PoolMode::Session;
    let p = proxy::start(cfg).await;
    proxy::wait_healthy(&p).await;
    let c = common::connect(proxy::port(&p), "app", "app", "app").await;
    c.batch_execute("create table fo_s(id int)").await.unwrap();
    let on: i32 = c.query_one("select inet_server_port()", &[]).await.unwrap().get(0);
    assert_eq!(on as u16, cluster.port(0));
    let replica = cluster.port(1);
    until("the table reaching the replica", || {
        common::superuser_exec(replica, "select count(*) from pg_stat_wal_receiver") == "1"
            && common::psql(replica, "app", "app", "app", "select 1 from fo_s").status.success()
    })
    .await;
    let cl = cluster.clone();
    tokio::task::spawn_blocking(move || cl.promote_node(1)).await.unwrap();
    let new = format!(":{}", cluster.port(1));
    until("discovery switching to the promoted node", || p.shared.runtime.load().primary.address.ends_with(&new)).await;
    let r = c.execute("insert into fo_s values (1)", &[]).await;
    let on_old = rows_on_old_primary(&cluster, "fo_s").await;
    assert_eq!(on_old, 0, "a write reached the demoted primary (client saw {r:?})");
    drop(p);
    drop(cluster);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_after_a_failover_sends_no_write_to_the_old_primary() {
    // After a failover the config file still names the old primary; it came back out of
    // recovery on its old timeline. A reload (SIGHUP for anything else) must not hand it the
    // writes, not even until discovery looks again.
    let (cluster, cfg, p) = failed_over_with_the_old_primary_back("fo_r").await;
    pgshift::proxy::reload_with(&p.shared, cfg).expect("reload");
    let c = common::connect(proxy::port(&p), "app", "app", "app").await;
    let r = c.execute("insert into fo_r values (1)", &[]).await;
    let on_old = rows_on_old_primary(&cluster, "fo_r").await;
    assert_eq!(on_old, 0, "a write reached the old primary after a reload (client saw {r:?})");
    drop(p);
    drop(cluster);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_after_a_failover_sends_no_write_to_the_old_primary() {
    // After a failover the config file still names the old primary, back out of recovery on its
    // old timeline. pgshift restarts (an upgrade, a crash): its first writes must not reach the
    // old primary while discovery has not heard from every node yet.
    let (cluster, cfg, p) = failed_over_with_the_old_primary_back("fo_s").await;
    p.stop().await;
    let p = proxy::start(cfg).await; // at once: no wait for the probes
    let c = common::connect(proxy::port(&p), "app", "app", "app").await;
    let r = c.execute("insert into fo_s values (1)", &[]).await;
    let on_old = rows_on_old_primary(&cluster, "fo_s").await;
    assert_eq!(on_old, 0, "a write reached the old primary after a restart (client saw {r:?})");
    r.expect("the write lands on the new primary");
    drop(p);
    drop(cluster);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_on_the_primary_writes_nothing_during_a_split_brain() {
    // Both replicas promoted from the same timeline: two nodes out of recovery on the highest
    // timeline, and the old primary out of recovery below them. pgshift writes to none of them,
    // a client that kept its connection to the old primary (session mode) included.
    let cluster = Arc::new(tokio::task::spawn_blocking(|| common::PrivateCluster::start(2)).await.unwrap());
    let mut cfg = proxy::config(cluster.primary_port(), cluster.replica_ports());
    cfg.proxy.pool_mode = pgshift::config::PoolMode::Session;
    // Discovery looks seldom, so it sees both promotions at once (no switch to one of them first).
    cfg.routing.health_check_interval = pgshift::config::Dur::secs(10);
    let p = proxy::start(cfg).await;
    proxy::wait_healthy(&p).await;
    let c = common::connect(proxy::port(&p), "app", "app", "app").await;
    c.batch_execute("create table fo_sb(id int)").await.unwrap();
    // and a transaction-mode client that vouches for its statements as reads
    let mut cfg = proxy::config(cluster.primary_port(), cluster.replica_ports());
    cfg.routing.health_check_interval = pgshift::config::Dur::secs(10);
    cfg.routing.failover_timeout = pgshift::config::Dur::secs(1);
    let p2 = proxy::start(cfg).await;
    proxy::wait_healthy(&p2).await;
    let c2 = common::connect(proxy::port(&p2), "app", "app", "app").await;
    c2.batch_execute("set pgshift.route = 'replica'").await.unwrap();
    let promotions: Vec<_> = [1, 2]
        .into_iter()
        .map(|i| {
            let cl = cluster.clone();
            tokio::task::spawn_blocking(move || cl.promote_node(i))
        })
        .collect();
    for t in promotions {
        t.await.unwrap();
    }
    until("discovery seeing the split brain", || {
        [&p, &p2].iter().all(|p| p.shared.failovers().state() == pgshift::pool::cluster::TopologyState::SplitBrain)
    })
    .await;
    let r = c.execute("insert into fo_sb values (1)", &[]).await;
    let r2 = c2.execute("insert into fo_sb values (2)", &[]).await;
    eprintln!("session client: {r:?}; vouching client: {r2:?}");
    let on_old = rows_on_old_primary(&cluster, "fo_sb").await;
    assert_eq!(on_old, 0, "a write reached a node during a split brain (clients saw {r:?}, {r2:?})");
    drop(p);
    drop(p2);
    drop(cluster);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_primary_never_rewound_is_not_taken_back_when_the_new_one_dies() {
    // The old primary came back out of recovery on its old timeline (history diverged) and sits
    // in the cluster; then the promoted primary dies too. The old one is the only node out of
    // recovery left, yet no write may go there: writes wait for a real promotion.
    let cluster = Arc::new(tokio::task::spawn_blocking(|| common::PrivateCluster::start(1)).await.unwrap());
    let mut cfg = proxy::config(cluster.primary_port(), cluster.replica_ports());
    cfg.routing.failover_timeout = pgshift::config::Dur::secs(3);
    let p = proxy::start(cfg).await;
    proxy::wait_healthy(&p).await;
    let c = common::connect(proxy::port(&p), "app", "app", "app").await;
    fail_over_leaving_the_old_primary_on_its_timeline(&cluster, &p, &c, "fo_tl").await;
    until("the old primary probed back up, out of recovery", || {
        let rt = p.shared.runtime.load();
        let h = &rt.replicas[0].health;
        h.up.load(Ordering::Relaxed) && h.timeline.load(Ordering::Relaxed) == 1
    })
    .await;
    let cl = cluster.clone();
    tokio::task::spawn_blocking(move || cl.kill_node(1)).await.unwrap();
    let r = c.execute("insert into fo_tl values (1)", &[]).await;
    let on_old = rows_on_old_primary(&cluster, "fo_tl").await;
    assert_eq!(on_old, 0, "a write reached the old primary on its old timeline (client saw {r:?})");
    drop(p);
    drop(cluster);
}
