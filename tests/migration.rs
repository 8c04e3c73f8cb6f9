//! The migration-phase switch against two real PostgreSQL clusters: a concurrent workload runs
//! through off -> dual_write -> shift_reads 50 -> cutover -> dual_write -> cutover -> done with no
//! client error and identical data at the end; a dead target is reported, not felt; a restart
//! resumes the persisted phase.

mod common;

use common::proxy;
use pgshift::migration::control;
use pgshift::migration::Phase;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

const TABLE: &str = "create table if not exists mig_items(id bigint primary key, v bigint not null, note text)";

fn state_file(name: &str) -> std::path::PathBuf {
    let f = std::env::temp_dir().join(format!("pgshift-mig-{name}-{}.json", std::process::id()));
    let _ = std::fs::remove_file(&f);
    f
}

fn config(primary: u16, replicas: &[u16], target: u16, state: &std::path::Path) -> pgshift::config::Config {
    let mut cfg = proxy::config(primary, replicas);
    cfg.migration = Some(pgshift::config::MigrationConfig {
        state_file: state.display().to_string(),
        target: pgshift::config::BackendConfig { host: "127.0.0.1".into(), port: target },
        verify_database: "app".into(),
        ..Default::default()
    });
    cfg.proxy.default_pool_size = 8;
    cfg
}

/// Copies mig_items from the source to the target (the runbook's initial copy, done under PAUSE).
async fn initial_copy(source: u16, target: u16) {
    use futures_util::{SinkExt, StreamExt};
    let src = common::connect(source, "app", "app", "app").await;
    let dst = common::connect(target, "app", "app", "app").await;
    dst.batch_execute("truncate mig_items").await.unwrap();
    let out = src.copy_out("copy mig_items to stdout").await.unwrap();
    let sink = dst.copy_in("copy mig_items from stdin").await.unwrap();
    futures_util::pin_mut!(out, sink);
    while let Some(chunk) = out.next().await {
        sink.send(chunk.unwrap()).await.unwrap();
    }
    sink.finish().await.unwrap();
}

/// One workload client: inserts its own ids, updates and deletes some of them, reads; records
/// any error.
async fn worker(port: u16, n: u64, stop: Arc<AtomicBool>, errors: Arc<AtomicU64>) {
    let c = common::connect(port, "app", "app", "app").await;
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let id = (n * 1_000_000 + i) as i64;
        let r = async {
            c.execute("insert into mig_items values ($1, 0, 'w')", &[&id]).await?;
            if i.is_multiple_of(3) {
                c.execute("update mig_items set v = v + 1, note = 'u' where id = $1", &[&(id - 1)]).await?;
            }
            if i.is_multiple_of(7) {
                c.batch_execute(&format!(
                    "begin; update mig_items set v = v + 10 where id = {}; delete from mig_items where id = {}; commit",
                    id - 2,
                    id - 5
                ))
                .await?;
            }
            c.query_one("select count(*) from mig_items where id = $1", &[&id]).await?;
            Ok::<_, tokio_postgres::Error>(())
        }
        .await;
        if let Err(e) = r {
            eprintln!("worker {n}: {e:?}");
            errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn phases_roundtrip_under_load_with_identical_data() {
    let bed = common::shared_bed();
    for port in [bed.primary_port, bed.target_port] {
        let c = common::connect(port, "app", "app", "app").await;
        c.batch_execute(&format!("drop table if exists mig_items; {TABLE}")).await.unwrap();
    }
    let state = state_file("roundtrip");
    let p = proxy::start(config(bed.primary_port, &bed.replica_ports, bed.target_port, &state)).await;
    proxy::wait_healthy(&p).await;
    let port = proxy::port(&p);
    let (stop, errors) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
    let workers: Vec<_> = (1..=6).map(|n| tokio::spawn(worker(port, n, stop.clone(), errors.clone()))).collect();
    let shared = p.shared.clone();
    let step = |ms| tokio::time::sleep(Duration::from_millis(ms));

    step(800).await; // phase off: the source only
    shared.paused.send_replace(true); // the initial copy happens while writes are held
    for _ in 0..200 {
        if shared.pools.all().iter().all(|pl| pl.snapshot().sv_active == 0) {
            break;
        }
        step(10).await;
    }
    initial_copy(bed.primary_port, bed.target_port).await;
    control::change_phase(&shared, Phase::DualWrite, None).await.unwrap();
    shared.paused.send_replace(false);

    step(1000).await;
    control::change_phase(&shared, Phase::ShiftReads, Some(50)).await.unwrap();
    // 40 fresh sessions: half of them (sticky) read from the target
    let mut on_target = 0;
    for _ in 0..40 {
        let c = common::connect(port, "app", "app", "app").await;
        let got: i32 = c.query_one("select inet_server_port()", &[]).await.unwrap().get(0);
        if got as u16 == bed.target_port {
            on_target += 1;
        }
    }
    assert!((10..=30).contains(&on_target), "{on_target} of 40 sessions read from the target at 50%");
    step(800).await;
    let s = control::status(&shared).unwrap();
    eprintln!("shift_reads observed {:?}% of reads on the target", s.observed_read_percent);

    control::change_phase(&shared, Phase::Cutover, None).await.unwrap();
    step(1000).await;
    control::change_phase(&shared, Phase::DualWrite, None).await.unwrap(); // rollback
    step(800).await;
    control::change_phase(&shared, Phase::ShiftReads, Some(0)).await.unwrap();
    control::change_phase(&shared, Phase::Cutover, None).await.unwrap();
    step(1000).await;

    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    assert!(shared.migration.mirror.drained(Duration::from_secs(10)).await);
    assert_eq!(errors.load(Ordering::Relaxed), 0, "clients saw errors");
    let status = control::status(&shared).unwrap();
    assert_eq!(status.mirror.diverged, 0, "{status:?}");
    assert!(status.mirror.mirrored > 100, "{status:?}");
    let report = control::verify_now(&shared, Some("app")).await.unwrap();
    let table = report.tables.iter().find(|t| t.table == "public.mig_items").expect("table compared");
    assert!(table.source_rows > 100, "{report:?}");
    assert_eq!(table.differing + table.missing_on_source + table.missing_on_target, 0, "{table:?}");
    assert_eq!(table.source_rows, table.target_rows);
    control::change_phase(&shared, Phase::Done, None).await.unwrap();
    let c = common::connect(port, "app", "app", "app").await;
    let got: i32 = c.query_one("select inet_server_port()", &[]).await.unwrap().get(0);
    assert_eq!(got as u16, bed.target_port, "done: the target serves");
    // a jump ahead is refused; rollback to any earlier phase is allowed
    control::change_phase(&shared, Phase::Off, None).await.unwrap();
    assert!(control::change_phase(&shared, Phase::Cutover, None).await.is_err());
    let _ = std::fs::remove_file(&state);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_target_is_reported_not_felt() {
    let bed = common::shared_bed();
    let target = Arc::new(tokio::task::spawn_blocking(|| common::PrivateCluster::start(0)).await.unwrap());
    for port in [bed.primary_port, target.primary_port()] {
        let c = common::connect(port, "app", "app", "app").await;
        c.batch_execute("create table if not exists mig_dead(id bigint primary key)").await.unwrap();
        c.batch_execute("truncate mig_dead").await.unwrap();
    }
    let state = state_file("dead");
    let mut cfg = config(bed.primary_port, &[], target.primary_port(), &state);
    if let Some(m) = cfg.migration.as_mut() {
        m.mirror_timeout = pgshift::config::Dur::secs(1);
    }
    let p = proxy::start(cfg).await;
    control::change_phase(&p.shared, Phase::DualWrite, None).await.unwrap();
    let c = common::connect(proxy::port(&p), "app", "app", "app").await;
    let base = (std::process::id() as i64) * 1000;
    for i in 0..20 {
        c.execute("insert into mig_dead values ($1)", &[&(base + i)]).await.unwrap();
    }
    let t2 = target.clone();
    tokio::task::spawn_blocking(move || t2.stop_node(0)).await.unwrap();
    for i in 20..60 {
        c.execute("insert into mig_dead values ($1)", &[&(base + i)])
            .await
            .expect("a dead target must not fail the client");
    }
    p.shared.migration.mirror.drained(Duration::from_secs(20)).await;
    let status = control::status(&p.shared).unwrap();
    assert!(status.diverged && status.mirror.failed > 0, "{status:?}");
    assert!(status.mirror.last_error.is_some());
    let _ = std::fs::remove_file(&state);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_resumes_the_persisted_phase() {
    let bed = common::shared_bed();
    let state = state_file("restart");
    let p = proxy::start(config(bed.primary_port, &[], bed.target_port, &state)).await;
    control::change_phase(&p.shared, Phase::DualWrite, None).await.unwrap();
    control::change_phase(&p.shared, Phase::ShiftReads, Some(30)).await.unwrap();
    drop(p);
    let p = proxy::start(config(bed.primary_port, &[], bed.target_port, &state)).await;
    let s = control::status(&p.shared).unwrap();
    assert_eq!((s.phase, s.read_percent), (Phase::ShiftReads, 30));
    let _ = std::fs::remove_file(&state);
}
