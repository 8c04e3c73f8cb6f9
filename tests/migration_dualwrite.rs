//! Statement-sync dual-write against two real PostgreSQL clusters: what a client can do that
//! would leave the source and the target different, and that pgshift must either replay
//! faithfully or report (a diverged count, a verify difference, a refused phase change).

mod common;

use common::proxy;
use pgshift::config::{Dur, SyncChoice};
use pgshift::migration::control;
use pgshift::migration::Phase;
use std::time::Duration;

fn state_file(name: &str) -> std::path::PathBuf {
    let f = std::env::temp_dir().join(format!("pgshift-dw-{name}-{}.json", std::process::id()));
    let _ = std::fs::remove_file(&f);
    f
}

/// A proxy in front of the bed's source primary (no replicas: every statement reaches the
/// primary), statement sync towards the bed's target.
async fn start(name: &str) -> (pgshift::proxy::Proxy, std::path::PathBuf) {
    let bed = common::shared_bed();
    let state = state_file(name);
    let mut cfg = proxy::config(bed.primary_port, &[]);
    cfg.migration = Some(pgshift::config::MigrationConfig {
        state_file: state.display().to_string(),
        target: pgshift::config::BackendConfig { host: "127.0.0.1".into(), port: bed.target_port },
        verify_database: "app".into(),
        sync: SyncChoice::Statement,
        drain_timeout: Dur::secs(2),
        ..Default::default()
    });
    let p = proxy::start(cfg).await;
    proxy::wait_healthy(&p).await;
    (p, state)
}

/// Runs `sql` directly on the source and on the target.
async fn on_both(sql: &str) {
    let bed = common::shared_bed();
    for port in [bed.primary_port, bed.target_port] {
        common::connect(port, "app", "app", "app").await.batch_execute(sql).await.unwrap();
    }
}

async fn target_client() -> tokio_postgres::Client {
    common::connect(common::shared_bed().target_port, "app", "app", "app").await
}

/// Differences verify reports for the tables and sequences whose name starts with `prefix`.
async fn verified_differences(p: &pgshift::proxy::Proxy, prefix: &str) -> (u64, String) {
    let report = control::verify_now(&p.shared, Some("app")).await.unwrap();
    let mine: Vec<_> = report.tables.iter().filter(|t| t.table.starts_with(&format!("public.{prefix}"))).collect();
    let n = mine
        .iter()
        .map(|t| t.missing_on_target + t.missing_on_source + t.differing + u64::from(t.source_rows != t.target_rows))
        .sum();
    (n, format!("{mine:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_sees_duplicate_rows_swapped_in_a_table_without_primary_key() {
    // Same row count, same distinct rows, different multiplicities: {a, a, b} against {a, b, b},
    // what `insert ... select case when random() < 0.5 ...` leaves in a log table.
    let bed = common::shared_bed();
    on_both("drop table if exists dwnopk_log; create table dwnopk_log(v text)").await;
    common::connect(bed.primary_port, "app", "app", "app")
        .await
        .batch_execute("insert into dwnopk_log values ('a'), ('a'), ('b')")
        .await
        .unwrap();
    target_client().await.batch_execute("insert into dwnopk_log values ('a'), ('b'), ('b')").await.unwrap();
    let (p, state) = start("nopk").await;
    let (n, tables) = verified_differences(&p, "dwnopk_").await;
    assert!(n > 0, "the copies differ, verify must say so: {tables}");
    let _ = std::fs::remove_file(&state);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_sees_a_sequence_moved_on_one_side_only() {
    // A read through a view runs nextval() unseen: the source's sequence moves, nothing is
    // replayed, and the tables stay equal; after cutover the target hands out used ids again.
    on_both(
        "drop view if exists dwseq_next; drop table if exists dwseq_items; drop sequence if exists dwseq_ids;
         create sequence dwseq_ids; create table dwseq_items(id bigint primary key default nextval('dwseq_ids'));
         create view dwseq_next as select nextval('dwseq_ids') as id",
    )
    .await;
    let (p, state) = start("seq").await;
    control::change_phase(&p.shared, Phase::DualWrite, None).await.unwrap();
    let c = common::connect(proxy::port(&p), "app", "app", "app").await;
    let id: i64 = c.query_one("select id from dwseq_next", &[]).await.unwrap().get(0);
    assert_eq!(id, 1);
    assert!(p.shared.migration.mirror.drained(Duration::from_secs(5)).await);
    let target: i64 = target_client().await.query_one("select nextval('dwseq_ids')", &[]).await.unwrap().get(0);
    // The target hands out 1 again; put it back for the comparison below.
    assert_eq!(target, 1, "the view's nextval is not replayed (statement sync cannot see it)");
    target_client().await.batch_execute("select setval('dwseq_ids', 1, false)").await.unwrap();
    let (n, tables) = verified_differences(&p, "dwseq_").await;
    assert!(n > 0, "the sequences differ, verify must say so: {tables}");
    let _ = std::fs::remove_file(&state);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_runs_with_the_settings_the_transaction_started_with() {
    // A transaction that writes, then changes search_path, then commits: the write resolved its
    // table with the search_path in force before the SET.
    on_both(
        "drop schema if exists dwsp_a cascade; drop schema if exists dwsp_b cascade;
         create schema dwsp_a; create schema dwsp_b;
         create table dwsp_a.t(id int primary key); create table dwsp_b.t(id int primary key)",
    )
    .await;
    let (p, state) = start("settings").await;
    control::change_phase(&p.shared, Phase::DualWrite, None).await.unwrap();
    let c = common::connect(proxy::port(&p), "app", "app", "app").await;
    c.batch_execute("set search_path = dwsp_a").await.unwrap();
    c.batch_execute("begin; insert into t values (1); set search_path = dwsp_b; commit").await.unwrap();
    c.batch_execute("insert into t values (2)").await.unwrap(); // dwsp_b.t on both
    assert!(p.shared.migration.mirror.drained(Duration::from_secs(5)).await);
    let status = control::status(&p.shared).unwrap();
    assert_eq!(status.mirror.diverged, 0, "{status:?}");
    let t = target_client().await;
    let a: i64 = t.query_one("select count(*) from dwsp_a.t where id = 1", &[]).await.unwrap().get(0);
    let b: i64 = t.query_one("select count(*) from dwsp_b.t where id = 1", &[]).await.unwrap().get(0);
    assert_eq!((a, b), (1, 0), "the target must hold row 1 in dwsp_a.t, as the source does");
    let _ = std::fs::remove_file(&state);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_pinned_before_dual_write_does_not_write_unmirrored() {
    // A client pinned to its server connection (a session advisory lock) during `off` keeps its
    // attachment: entering dual_write must not leave its later writes unreplayed.
    on_both("drop table if exists dwpin_items; create table dwpin_items(id int primary key)").await;
    let (p, state) = start("pinned").await;
    let c = common::connect(proxy::port(&p), "app", "app", "app").await;
    c.batch_execute("select pg_advisory_lock(424242)").await.unwrap();
    let entered = control::change_phase(&p.shared, Phase::DualWrite, None).await;
    c.batch_execute("insert into dwpin_items values (1)").await.unwrap();
    assert!(p.shared.migration.mirror.drained(Duration::from_secs(5)).await);
    let on_target: i64 = target_client().await.query_one("select count(*) from dwpin_items", &[]).await.unwrap().get(0);
    let status = control::status(&p.shared).unwrap();
    assert!(
        entered.is_err() || on_target == 1 || status.mirror.diverged > 0,
        "dual_write entered ({entered:?}) yet the pinned client's insert is neither on the target \
         nor counted: {status:?}"
    );
    let _ = std::fs::remove_file(&state);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_failing_on_each_side_in_turn_is_counted() {
    // One statement fails on the source only (its table exists on the target alone), the client
    // rolls back to a savepoint and goes on; a later one fails on the target only (a constraint
    // the source lacks). One error on each side: the target lost the second write all the same.
    on_both("drop table if exists dwerr_x; drop table if exists dwerr_y; create table dwerr_y(v int)").await;
    target_client()
        .await
        .batch_execute("create table dwerr_x(v int); alter table dwerr_y add constraint small check (v < 10)")
        .await
        .unwrap();
    let (p, state) = start("errors").await;
    control::change_phase(&p.shared, Phase::DualWrite, None).await.unwrap();
    let c = common::connect(proxy::port(&p), "app", "app", "app").await;
    c.batch_execute("begin").await.unwrap();
    c.batch_execute("savepoint a").await.unwrap();
    assert!(c.batch_execute("insert into dwerr_x values (1)").await.is_err());
    c.batch_execute("rollback to savepoint a").await.unwrap();
    c.batch_execute("insert into dwerr_y values (20)").await.unwrap();
    c.batch_execute("commit").await.unwrap();
    assert!(p.shared.migration.mirror.drained(Duration::from_secs(5)).await);
    let status = control::status(&p.shared).unwrap();
    assert!(status.mirror.diverged > 0, "the target lost a committed write: {status:?}");
    let _ = std::fs::remove_file(&state);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_in_flight_when_its_client_leaves_is_replayed_or_counted() {
    // The client sends an autocommit insert and hangs up before the answer: the source commits
    // it all the same, and the proxy closes the server connection without reading the reply.
    on_both("drop table if exists dwgone_t; create table dwgone_t(id int primary key)").await;
    let (p, state) = start("gone").await;
    control::change_phase(&p.shared, Phase::DualWrite, None).await.unwrap();
    let mut s = common::raw::login(proxy::port(&p), "app", "app", "app").await;
    let mut out = Vec::new();
    common::raw::query(&mut out, "insert into dwgone_t select 1 from pg_sleep(0.5)");
    tokio::io::AsyncWriteExt::write_all(&mut s, &out).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(s);
    let src = common::connect(common::shared_bed().primary_port, "app", "app", "app").await;
    let mut on_source = 0i64;
    for _ in 0..50 {
        on_source = src.query_one("select count(*) from dwgone_t", &[]).await.unwrap().get(0);
        if on_source == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(on_source, 1, "the source committed the insert");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(p.shared.migration.mirror.drained(Duration::from_secs(5)).await);
    let on_target: i64 = target_client().await.query_one("select count(*) from dwgone_t", &[]).await.unwrap().get(0);
    let status = control::status(&p.shared).unwrap();
    assert!(on_target == 1 || status.mirror.diverged > 0, "the source holds the row, the target not: {status:?}");
    let _ = std::fs::remove_file(&state);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "statement sync replays only what pgshift classifies as a write: a read through a view \
            (or rule, policy, operator, cast) whose function writes is not replayed nor counted; \
            verify shows the rows missing on the target"]
async fn a_write_hidden_behind_a_view_is_replayed_or_counted() {
    on_both(
        "drop view if exists dwview_touch; drop function if exists dwview_f(); drop table if exists dwview_log;
         create table dwview_log(id int primary key);
         create function dwview_f() returns int language sql as 'insert into dwview_log values (1) returning id';
         create view dwview_touch as select dwview_f() as id",
    )
    .await;
    let (p, state) = start("view").await;
    control::change_phase(&p.shared, Phase::DualWrite, None).await.unwrap();
    let c = common::connect(proxy::port(&p), "app", "app", "app").await;
    c.batch_execute("select * from dwview_touch").await.unwrap();
    assert!(p.shared.migration.mirror.drained(Duration::from_secs(5)).await);
    let on_target: i64 = target_client().await.query_one("select count(*) from dwview_log", &[]).await.unwrap().get(0);
    let status = control::status(&p.shared).unwrap();
    assert!(on_target == 1 || status.mirror.diverged > 0, "the source holds the row, the target not: {status:?}");
    let _ = std::fs::remove_file(&state);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_clients_untracked_session_state_does_not_reach_anothers_replay() {
    on_both(
        "drop schema if exists dwleak_b cascade; drop table if exists public.dwleak_t;
         create schema dwleak_b; create table public.dwleak_t(id int primary key);
         create table dwleak_b.dwleak_t(id int primary key)",
    )
    .await;
    let (p, state) = start("leak").await;
    control::change_phase(&p.shared, Phase::DualWrite, None).await.unwrap();
    let a = common::connect(proxy::port(&p), "app", "app", "app").await;
    a.batch_execute("select set_config('search_path', 'dwleak_b', false)").await.unwrap();
    let b = common::connect(proxy::port(&p), "app", "app", "app").await;
    b.batch_execute("insert into dwleak_t values (1)").await.unwrap(); // public.dwleak_t on the source
                                                                       // a's own state stays with a's replays: its row goes to dwleak_b on both.
    a.batch_execute("insert into dwleak_t values (2)").await.unwrap();
    b.batch_execute("insert into dwleak_t values (3)").await.unwrap();
    assert!(p.shared.migration.mirror.drained(Duration::from_secs(5)).await);
    let t = target_client().await;
    let rows = "select coalesce(string_agg(id::text, ',' order by id), '') from ";
    let public: String = t.query_one(&format!("{rows} public.dwleak_t"), &[]).await.unwrap().get(0);
    let b_schema: String = t.query_one(&format!("{rows} dwleak_b.dwleak_t"), &[]).await.unwrap().get(0);
    let status = control::status(&p.shared).unwrap();
    assert_eq!((public.as_str(), b_schema.as_str()), ("1,3", "2"), "{status:?}");
    assert_eq!(status.mirror.diverged, 0, "{status:?}");
    // a leaving closes its replay connection after its last replay; b's replays go on.
    drop(a);
    b.batch_execute("insert into dwleak_t values (4)").await.unwrap();
    assert!(p.shared.migration.mirror.drained(Duration::from_secs(5)).await);
    let public: String = t.query_one(&format!("{rows} public.dwleak_t"), &[]).await.unwrap().get(0);
    assert_eq!(public, "1,3,4");
    let _ = std::fs::remove_file(&state);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_through_sql_prepare_and_execute_is_replayed() {
    on_both("drop table if exists dwexec_t; create table dwexec_t(id int primary key)").await;
    let (p, state) = start("execute").await;
    control::change_phase(&p.shared, Phase::DualWrite, None).await.unwrap();
    let c = common::connect(proxy::port(&p), "app", "app", "app").await;
    c.batch_execute("prepare dwexec_ins(int) as insert into dwexec_t values ($1)").await.unwrap();
    c.batch_execute("execute dwexec_ins(1)").await.unwrap();
    assert!(p.shared.migration.mirror.drained(Duration::from_secs(5)).await);
    let on_target: i64 = target_client().await.query_one("select count(*) from dwexec_t", &[]).await.unwrap().get(0);
    let status = control::status(&p.shared).unwrap();
    assert!(on_target == 1 || status.mirror.diverged > 0, "the source holds the row, the target not: {status:?}");
    let _ = std::fs::remove_file(&state);
}
