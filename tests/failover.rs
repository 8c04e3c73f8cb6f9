//! Role discovery and failover against real PostgreSQL: a primary and a streaming replica, the
//! primary killed under a write load and the replica promoted with `pg_ctl promote`; then the old
//! primary started again on its old timeline (split-brain material) and kept away from writes.

mod common;

use common::proxy;
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
                        match e.code() {
                            Some(code) => errors.push(code.code().to_string()),
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
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cl = cluster.clone();
    tokio::task::spawn_blocking(move || cl.promote_node(1)).await.unwrap();
    let promoted = Instant::now();
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
    assert!(errors.iter().all(|c| c == "08006" || c == "57P01"), "{errors:?}");

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
