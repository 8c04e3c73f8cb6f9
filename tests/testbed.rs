//! Checks the test bed itself (scripts/pgbed.sh, scripts/test.sh, tests/common).

mod common;

use common::*;
use std::time::{Duration, Instant};

/// Polls `f` every 100 ms until it returns true, for at most `secs` seconds.
fn wait_until(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out after {secs}s waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Running postgres processes started on a data dir under `dir`.
fn postgres_processes_under(dir: &std::path::Path) -> usize {
    let needle = dir.to_str().expect("utf-8 dir");
    std::fs::read_dir("/proc")
        .expect("read /proc")
        .filter_map(|e| std::fs::read(e.ok()?.path().join("cmdline")).ok())
        .filter(|c| String::from_utf8_lossy(c).contains(needle))
        .count()
}

#[tokio::test]
async fn shared_bed_has_source_replicas_and_target() {
    let bed = shared_bed();
    assert_eq!(bed.replica_ports.len(), 2, "scripts/test.sh starts 2 source replicas");

    let primary = connect(bed.primary_port, "app", "app", "app").await;
    let row = primary.query_one("SELECT pg_is_in_recovery()", &[]).await.expect("query primary");
    assert!(!row.get::<_, bool>(0));
    for &port in &bed.replica_ports {
        let replica = connect(port, "app", "app", "app").await;
        let row = replica.query_one("SELECT pg_is_in_recovery()", &[]).await.expect("query replica");
        assert!(row.get::<_, bool>(0), "port {port} should be a hot standby");
    }
    let target = connect(bed.target_port, "app", "app", "app").await;
    let row = target.query_one("SELECT pg_is_in_recovery()", &[]).await.expect("query target");
    assert!(!row.get::<_, bool>(0));

    // scram-sha-256 is enforced: a wrong password is refused.
    assert!(try_connect(bed.primary_port, "app", "wrong", "app").await.is_err());
    let out = psql(bed.primary_port, "app", "app", "app", "SELECT current_user");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "app");
    let streaming =
        superuser_exec(bed.primary_port, "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'");
    assert_eq!(streaming, "2");
}

#[tokio::test]
async fn private_cluster_survives_faults_and_cleans_up() {
    let cluster = PrivateCluster::start(1);
    let dir = cluster.dir().to_path_buf();
    let (p, r) = (cluster.primary_port(), cluster.replica_ports()[0]);
    assert_eq!(cluster.port(1), r);
    assert!(cluster.data_dir(1).join("PG_VERSION").exists());

    // Write on the primary, read it on the replica.
    let primary = connect(p, "app", "app", "app").await;
    primary
        .batch_execute("CREATE TABLE bedcheck (x int); INSERT INTO bedcheck VALUES (42)")
        .await
        .expect("write on primary");
    wait_until(10, "the row on the replica", || {
        psql(r, "app", "app", "app", "SELECT x FROM bedcheck").stdout == b"42\n"
    });

    // Crash the primary and start it again: data survives, the replica reconnects.
    cluster.kill_node(0);
    assert!(try_connect(p, "app", "app", "app").await.is_err(), "killed primary still answers");
    cluster.start_node(0);
    assert_eq!(psql(p, "app", "app", "app", "SELECT x FROM bedcheck").stdout, b"42\n");
    wait_until(15, "the replica to stream again", || {
        superuser_exec(p, "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'") == "1"
    });

    // A paused replica hangs connections; resumed, it answers again.
    cluster.pause_node(1);
    let hung = tokio::time::timeout(Duration::from_millis(500), try_connect(r, "app", "app", "app")).await;
    assert!(hung.is_err(), "a paused node should not answer");
    cluster.resume_node(1);
    let replica = connect(r, "app", "app", "app").await;
    replica.query_one("SELECT 1", &[]).await.expect("query resumed replica");

    // Clean stop and start of the replica.
    cluster.stop_node(1);
    assert!(!psql(r, "app", "app", "app", "SELECT 1").status.success());
    cluster.start_node(1);
    assert!(psql(r, "app", "app", "app", "SELECT 1").status.success());

    assert!(postgres_processes_under(&dir) > 0);
    drop(cluster);
    assert!(!dir.exists(), "{} still exists after drop", dir.display());
    assert_eq!(postgres_processes_under(&dir), 0, "postgres processes left after drop");
}

#[test]
fn private_cluster_is_destroyed_when_a_test_panics() {
    let dir = std::panic::catch_unwind(|| {
        let cluster = PrivateCluster::start(0);
        let dir = cluster.dir().to_path_buf();
        std::panic::panic_any(dir);
    })
    .expect_err("the closure panics")
    .downcast::<std::path::PathBuf>()
    .expect("panic payload is the dir");
    assert!(!dir.exists(), "{} still exists after a panic", dir.display());
    assert_eq!(postgres_processes_under(&dir), 0);
}

#[test]
fn free_port_is_bindable_and_conn_str_quotes() {
    let port = free_port();
    std::net::TcpListener::bind(("127.0.0.1", port)).expect("free_port() should be bindable");
    assert_eq!(
        conn_str(5432, "a b", "it's", "db"),
        "host=127.0.0.1 port=5432 user='a b' password='it\\'s' dbname='db' connect_timeout=10"
    );
}
