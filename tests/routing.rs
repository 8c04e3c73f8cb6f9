//! Read/write split against a real primary with two streaming replicas: round-robin reads,
//! writes and locking reads on the primary, replica failure and lag, read-your-writes.

mod common;

use common::proxy;
use std::collections::HashMap;
use std::time::Duration;

async fn port_of(c: &tokio_postgres::Client, sql: &str) -> u16 {
    let row = c.query_one(sql, &[]).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    row.get::<_, i32>(0) as u16
}

/// A private cluster with two replicas behind a proxy that leaves out a replica 1 s behind.
async fn lag_limited_proxy() -> (common::PrivateCluster, pgshift::proxy::Proxy) {
    let cluster = tokio::task::spawn_blocking(|| common::PrivateCluster::start(2)).await.unwrap();
    let mut cfg = proxy::config(cluster.primary_port(), cluster.replica_ports());
    cfg.routing.max_replica_lag = pgshift::config::Dur::secs(1);
    let p = proxy::start(cfg).await;
    proxy::wait_healthy(&p).await;
    (cluster, p)
}

async fn shared_proxy() -> pgshift::proxy::Proxy {
    let bed = common::shared_bed();
    let p = proxy::start(proxy::config(bed.primary_port, &bed.replica_ports)).await;
    proxy::wait_healthy(&p).await;
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_spread_round_robin_over_replicas() {
    let bed = common::shared_bed();
    let p = shared_proxy().await;
    let c = common::connect(proxy::port(&p), "app", "app", "app").await;
    let mut seen: HashMap<u16, usize> = HashMap::new();
    for _ in 0..1000 {
        *seen.entry(port_of(&c, "select inet_server_port()").await).or_default() += 1;
    }
    assert!(!seen.contains_key(&bed.primary_port), "reads reached the primary: {seen:?}");
    for r in &bed.replica_ports {
        let n = seen.get(r).copied().unwrap_or(0);
        assert!((400..=600).contains(&n), "replica {r} got {n} of 1000 reads: {seen:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_locking_reads_and_transactions_stay_on_the_primary() {
    let bed = common::shared_bed();
    let p = shared_proxy().await;
    let c = common::connect(proxy::port(&p), "app", "app", "app").await;
    c.batch_execute("create table if not exists rt_jobs(id serial primary key, state text)").await.unwrap();
    let primary = bed.primary_port;
    let cases = [
        "insert into rt_jobs(state) values ('new') returning inet_server_port()",
        "select inet_server_port() from rt_jobs for update skip locked limit 1",
        "select inet_server_port() from (select 1) x for share",
        "select inet_server_port(), nextval('rt_jobs_id_seq')",
        "with w as (insert into rt_jobs(state) values ('x') returning id) select inet_server_port() from w",
        "/* pgshift:primary */ select inet_server_port()",
        "select inet_server_port(), pg_advisory_xact_lock(42)",
    ];
    for sql in cases {
        assert_eq!(port_of(&c, sql).await, primary, "{sql}");
    }
    // extended protocol: classified at Parse, Bind/Execute follow it
    let stmt = c.prepare("select inet_server_port() from rt_jobs where id = $1 for update").await.unwrap();
    for _ in 0..5 {
        let rows = c.query(&stmt, &[&1i32]).await.unwrap();
        if let Some(r) = rows.first() {
            assert_eq!(r.get::<_, i32>(0) as u16, primary);
        }
    }
    // a read-write transaction stays on the primary, reads included
    c.batch_execute("begin").await.unwrap();
    for _ in 0..5 {
        assert_eq!(port_of(&c, "select inet_server_port()").await, primary);
    }
    assert_eq!(port_of(&c, "select inet_server_port() from rt_jobs for update limit 1").await, primary);
    c.batch_execute("commit").await.unwrap();
    // a read-only transaction runs on one replica throughout (a fresh client: this one's own
    // writes would send its reads to the primary until the replicas have replayed them)
    let c = common::connect(proxy::port(&p), "app", "app", "app").await;
    c.batch_execute("begin read only").await.unwrap();
    let first = port_of(&c, "select inet_server_port()").await;
    assert!(bed.replica_ports.contains(&first));
    for _ in 0..5 {
        assert_eq!(port_of(&c, "select inet_server_port()").await, first);
    }
    c.batch_execute("commit").await.unwrap();
    // the session override
    c.batch_execute("set pgshift.route = 'primary'").await.unwrap();
    for _ in 0..5 {
        assert_eq!(port_of(&c, "select inet_server_port()").await, primary);
    }
    c.batch_execute("reset pgshift.route").await.unwrap();
    // back to automatic routing: reads reach a replica again (one that lags behind its
    // max_replica_lag on a loaded machine is skipped for a moment, so allow a few tries)
    let mut on_replica = false;
    for _ in 0..50 {
        if bed.replica_ports.contains(&port_of(&c, "select inet_server_port()").await) {
            on_replica = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(on_replica, "after RESET pgshift.route no read reached a replica");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_off_sends_everything_to_the_primary() {
    let bed = common::shared_bed();
    let mut cfg = proxy::config(bed.primary_port, &bed.replica_ports);
    cfg.routing.read_write_split = false;
    let p = proxy::start(cfg).await;
    let c = common::connect(proxy::port(&p), "app", "app", "app").await;
    for _ in 0..20 {
        assert_eq!(port_of(&c, "select inet_server_port()").await, bed.primary_port);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_in_recovery_never_gets_a_write() {
    let bed = common::shared_bed();
    // misconfigured: a replica named as the primary (a failover pgshift was not told about), roles
    // as declared
    let mut cfg = proxy::config(bed.replica_ports[0], &[]);
    cfg.routing.role_discovery = false;
    let p = proxy::start(cfg).await;
    for _ in 0..100 {
        if p.shared.runtime.load().primary.health.in_recovery.load(std::sync::atomic::Ordering::Relaxed) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let c = common::connect(proxy::port(&p), "app", "app", "app").await;
    let err = c.batch_execute("create table rt_never(id int)").await.unwrap_err();
    let db = err.as_db_error().unwrap();
    assert_eq!(db.code().code(), "25006");
    assert!(db.message().contains("in recovery"), "{}", db.message());
    assert_eq!(port_of(&c, "select inet_server_port()").await, bed.replica_ports[0], "reads still work");

    // With role discovery, no node is out of recovery: writes wait for a primary, then fail
    // saying so; the write never reaches the node in recovery.
    let mut cfg = proxy::config(bed.replica_ports[0], &[]);
    cfg.routing.failover_timeout = pgshift::config::Dur::secs(1);
    let p = proxy::start(cfg).await;
    for _ in 0..100 {
        if p.shared.failovers().state() != pgshift::pool::cluster::TopologyState::Primary {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let c = common::connect(proxy::port(&p), "app", "app", "app").await;
    let err = c.batch_execute("create table rt_never(id int)").await.unwrap_err();
    let db = err.as_db_error().unwrap();
    assert_eq!(db.code().code(), "08006");
    assert!(db.message().contains("failover"), "{}", db.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_replica_costs_no_failed_reads_and_comes_back() {
    let cluster = std::sync::Arc::new(tokio::task::spawn_blocking(|| common::PrivateCluster::start(2)).await.unwrap());
    let mut cfg = proxy::config(cluster.primary_port(), cluster.replica_ports());
    cfg.routing.ban_time = pgshift::config::Dur::secs(2);
    let p = proxy::start(cfg).await;
    proxy::wait_healthy(&p).await;
    let port = proxy::port(&p);
    let stopped = cluster.replica_ports()[0];
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(common::connect(port, "app", "app", "app").await);
    }
    let reader = tokio::spawn(async move {
        let (mut ok, mut seen_stopped_after) = (0, 0);
        let started = std::time::Instant::now();
        while started.elapsed() < Duration::from_secs(8) {
            for c in &clients {
                let got = port_of(c, "select inet_server_port()").await; // panics on any failed read
                ok += 1;
                if got == stopped && started.elapsed() > Duration::from_secs(6) {
                    seen_stopped_after += 1;
                }
            }
        }
        (ok, seen_stopped_after)
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    tokio::task::spawn_blocking({
        let c = cluster.clone();
        move || c.stop_node(1)
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    tokio::task::spawn_blocking({
        let c = cluster.clone();
        move || c.start_node(1)
    })
    .await
    .unwrap();
    let (ok, back) = reader.await.expect("a read failed while a replica was down");
    assert!(ok > 100, "only {ok} reads");
    assert!(back > 0, "the restarted replica never served reads again");
    drop(cluster);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_replica_is_left_out_and_reads_see_own_writes() {
    let (cluster, p) = lag_limited_proxy().await;
    let port = proxy::port(&p);
    let (paused, live) = (cluster.replica_ports()[0], cluster.replica_ports()[1]);
    let c = common::connect(port, "app", "app", "app").await;
    c.batch_execute("create table ryw(id int primary key, v text)").await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await; // the table reaches both replicas
    let direct = common::connect(paused, "app", "app", "app").await;
    direct.batch_execute("select pg_wal_replay_pause()").await.unwrap();
    // read-your-writes: every insert is visible to the very next read through pgshift
    for i in 0..1000 {
        c.execute("insert into ryw values ($1, 'x')", &[&i]).await.unwrap();
        let n: i64 = c.query_one("select count(*) from ryw where id = $1", &[&i]).await.unwrap().get(0);
        assert_eq!(n, 1, "iteration {i}: read did not see its own write");
    }
    // the paused replica now lags past 1s: reads avoid it
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let other = common::connect(port, "app", "app", "app").await; // no writes of its own
    for _ in 0..50 {
        assert_eq!(port_of(&other, "select inet_server_port()").await, live, "a lagging replica served a read");
    }
    let rt = p.shared.runtime.load();
    let fallbacks = rt.primary.health.ryw_fallbacks.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!("read-your-writes sent {fallbacks} of 1000 reads to the primary");
    direct.batch_execute("select pg_wal_replay_resume()").await.unwrap();
    drop(cluster);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_search_path_that_shadows_built_ins_keeps_reads_on_the_primary() {
    // With pg_catalog named after another schema, `inet_server_port()` may be the user's own
    // function: nothing is proven a read.
    let bed = common::shared_bed();
    let p = shared_proxy().await;
    let c = common::connect(proxy::port(&p), "app", "app", "app").await;
    c.batch_execute("SET search_path = public, pg_catalog").await.expect("SET");
    for _ in 0..4 {
        assert_eq!(port_of(&c, "select inet_server_port()").await, bed.primary_port);
    }
    c.batch_execute("SET search_path = pg_catalog, public").await.expect("SET");
    let mut ports = std::collections::HashSet::new();
    for _ in 0..4 {
        ports.insert(port_of(&c, "select inet_server_port()").await);
    }
    assert!(!ports.contains(&bed.primary_port), "pg_catalog first: reads go to the replicas again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_cut_off_from_its_primary_serves_no_reads() {
    // A replica whose WAL receiver is gone has replayed all it received: "caught up" by its own
    // positions, yet further behind the primary with every commit there.
    let (cluster, p) = lag_limited_proxy().await;
    let port = proxy::port(&p);
    let (cut, live) = (cluster.replica_ports()[0], cluster.replica_ports()[1]);
    let c = common::connect(port, "app", "app", "app").await;
    c.batch_execute("create table cut_t(id int)").await.unwrap();
    for r in [cut, live] {
        while !common::psql(r, "app", "app", "app", "select 1 from cut_t").status.success() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    common::superuser_exec(cut, "ALTER SYSTEM SET primary_conninfo = ''");
    common::superuser_exec(cut, "SELECT pg_reload_conf()");
    while common::superuser_exec(cut, "select count(*) from pg_stat_wal_receiver") != "0" {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let direct = common::connect(cluster.primary_port(), "app", "app", "app").await;
    direct.batch_execute("insert into cut_t select generate_series(1, 100)").await.unwrap();
    // past max_replica_lag since the cut replica's last replayed commit
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let other = common::connect(port, "app", "app", "app").await; // no writes of its own
    for _ in 0..50 {
        assert_eq!(
            port_of(&other, "select inet_server_port()").await,
            live,
            "a replica cut off from its primary served a read"
        );
    }
    drop(cluster);
}

/// On a quiet primary the last commit a replica replayed may be old while it replays a record
/// without a commit (a checkpoint's): its data is no older than the last probe that saw it
/// caught up, so it keeps serving reads. Before, such a probe reported the age of that last
/// commit as the lag, and the replica left the rotation for a probe interval.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_replaying_a_record_without_a_commit_keeps_serving_reads() {
    let cluster = tokio::task::spawn_blocking(|| common::PrivateCluster::start(1)).await.unwrap();
    let replica = cluster.replica_ports()[0];
    let mut cfg = proxy::config(cluster.primary_port(), cluster.replica_ports());
    cfg.routing.max_replica_lag = pgshift::config::Dur::secs(6);
    let p = proxy::start(cfg).await;
    proxy::wait_healthy(&p).await;
    let direct = common::connect(cluster.primary_port(), "app", "app", "app").await;
    direct.batch_execute("create table quiet_t(id int); insert into quiet_t values (1)").await.unwrap();
    common::until("the replica replays the commit", || {
        common::psql(replica, "app", "app", "app", "select 1 from quiet_t").status.success()
    })
    .await;
    // The last replayed commit grows older than max_replica_lag.
    tokio::time::sleep(Duration::from_secs(7)).await;
    common::superuser_exec(replica, "SELECT pg_wal_replay_pause()");
    common::superuser_exec(cluster.primary_port(), "CHECKPOINT");
    common::until("the replica receives the checkpoint's record without replaying it", || {
        common::superuser_exec(replica, "SELECT pg_last_wal_receive_lsn() > pg_last_wal_replay_lsn()") == "t"
    })
    .await;
    tokio::time::sleep(Duration::from_millis(750)).await; // a few probes see it
    let c = common::connect(proxy::port(&p), "app", "app", "app").await;
    for _ in 0..5 {
        assert_eq!(port_of(&c, "select inet_server_port()").await, replica, "a quiet replica left the rotation");
    }
    common::superuser_exec(replica, "SELECT pg_wal_replay_resume()");
    drop(cluster);
}

/// A client may end its own backends (`pg_terminate_backend` works on any backend of one's own
/// role), on a replica too. Ending the one serving its read must get the read answered
/// elsewhere and ban the replica for no one; ending the health probe's (it logs in as the first
/// `[auth]` user, often the application's) must not ban it either. Before, each kill banned the
/// replica for every client, so a loop of them moved all reads to the primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_ending_its_own_backends_on_a_replica_bans_it_for_no_one() {
    let cluster = tokio::task::spawn_blocking(|| common::PrivateCluster::start(1)).await.unwrap();
    let replica_port = cluster.replica_ports()[0];
    let p = proxy::start(proxy::config(cluster.primary_port(), cluster.replica_ports())).await;
    proxy::wait_healthy(&p).await;
    let port = proxy::port(&p);
    let direct = common::connect(replica_port, "app", "app", "app").await;
    let victim = common::connect(port, "app", "app", "app").await;
    assert_eq!(port_of(&victim, "select inet_server_port()").await, replica_port, "reads go to the replica");

    // The read in flight on the replica: its backend is ended under it.
    let read = tokio::spawn(async move {
        let row = victim
            .query_one("select inet_server_port(), pg_sleep(3) is null /* victim-read */", &[])
            .await
            .expect("the read is answered despite its backend ending");
        (victim, row.get::<_, i32>(0) as u16)
    });
    let find = "select pid from pg_stat_activity where query like '%victim-read%' and pid <> pg_backend_pid()";
    let pid: i32 = loop {
        if let Some(row) = direct.query_opt(find, &[]).await.unwrap() {
            break row.get(0);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    direct.execute("select pg_terminate_backend($1)", &[&pid]).await.unwrap();
    let (victim, answered_by) = read.await.unwrap();
    assert_eq!(answered_by, cluster.primary_port(), "the retried read went elsewhere");
    let ban_reason = || p.shared.runtime.load().clusters[0].replicas[0].health.last_error.lock().unwrap().clone();
    assert_eq!(ban_reason(), None, "the replica was banned for the ended read");

    // The health probe's backend on the replica, ended between probes again and again for a few
    // probe rounds.
    let probes = "select pg_terminate_backend(pid) from pg_stat_activity \
                  where query like 'SELECT pg_is_in_recovery(), %' and state = 'idle' and pid <> pg_backend_pid()";
    for _ in 0..20 {
        direct.simple_query(probes).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(ban_reason(), None, "the replica was banned for the ended probe connections");
    assert_eq!(port_of(&victim, "select inet_server_port()").await, replica_port, "reads go to the replica again");
    drop(p);
    drop(cluster);
}

/// A read that ends its own backend (`pg_terminate_backend(pg_backend_pid())`, sent to the
/// replicas by a hint) is retried once, on the primary, where it ends that backend too: the
/// client gets PostgreSQL's 57P01. It must not go from replica to replica for ever, opening a
/// connection each time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_that_ends_its_own_backend_is_retried_once_not_for_ever() {
    let p = shared_proxy().await; // two replicas
    let c = common::connect(proxy::port(&p), "app", "app", "app").await;
    let sql = "/* pgshift:replica */ select pg_terminate_backend(pg_backend_pid())";
    let r = tokio::time::timeout(Duration::from_secs(30), c.simple_query(sql)).await;
    let e = r.expect("the read still retried after 30s").expect_err("the backend ended");
    assert_eq!(e.as_db_error().map(|d| d.code().code()), Some("57P01"), "{e}");
}
