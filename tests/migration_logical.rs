//! Migration on PostgreSQL's logical replication, against two real servers (both with
//! `wal_level = logical`): every phase forward and back under a concurrent write load whose rows
//! take `now()`, `random()` and sequence values, and at the end source and target identical row
//! for row, sequences included; a schema that does not match is refused with every difference;
//! a cutover whose target cannot catch up is aborted and writes stay on the source.

mod common;

use common::{haproxy, proxy};
use pgshift::migration::control;
use pgshift::migration::{MigrationError, Phase};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

const SCHEMA: &str = "
    create table items(id bigserial primary key, v bigint not null, note text,
                       at timestamptz not null default now(), r double precision default random());
    create table events(id bigint generated always as identity primary key, item bigint not null,
                        at timestamptz not null default clock_timestamp());
    create table kv(k text primary key, v text)";

/// A fresh database of this name on both servers, with `SCHEMA`; seed rows on the source.
async fn fresh_database(name: &str, seed: bool) {
    let bed = common::shared_bed();
    drop_databases(name).await;
    for port in [bed.primary_port, bed.target_port] {
        let admin = common::connect(port, "app", "app", "app").await;
        admin.batch_execute(&format!("create database {name}")).await.unwrap();
        let c = common::connect(port, "app", "app", name).await;
        c.batch_execute(SCHEMA).await.unwrap();
    }
    if seed {
        let c = common::connect(bed.primary_port, "app", "app", name).await;
        c.batch_execute("insert into items(v, note) select g, 'seed' from generate_series(1, 5000) g").await.unwrap();
    }
}

/// Drops `name` on both servers, with whatever logical replication an earlier, interrupted run
/// left in it: subscriptions first (their workers hold the slots), then slots, then databases.
async fn drop_databases(name: &str) {
    let bed = common::shared_bed();
    let ports = [bed.primary_port, bed.target_port];
    for port in ports {
        let admin = common::connect(port, "app", "app", "app").await;
        if admin.query_opt("select 1 from pg_database where datname = $1", &[&name]).await.unwrap().is_none() {
            continue;
        }
        let c = common::connect(port, "app", "app", name).await;
        let subs = "select subname from pg_subscription s join pg_database d on d.oid = s.subdbid where d.datname = $1";
        for row in c.query(subs, &[&name]).await.unwrap() {
            let sub: String = row.get(0);
            c.batch_execute(&format!(
                "alter subscription {sub} disable; alter subscription {sub} set (slot_name = none); drop subscription {sub}"
            ))
            .await
            .unwrap();
        }
    }
    for port in ports {
        let admin = common::connect(port, "app", "app", "app").await;
        let drop_slots = "select pg_drop_replication_slot(slot_name) from pg_replication_slots where database = $1";
        for _ in 0..100 {
            match admin.execute(drop_slots, &[&name]).await {
                Ok(_) => break,
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await, // a worker still exiting
            }
        }
        admin.batch_execute(&format!("drop database if exists {name} with (force)")).await.unwrap();
    }
}

fn config(database: &str, state: &std::path::Path) -> pgshift::config::Config {
    let bed = common::shared_bed();
    let mut cfg = proxy::config(bed.primary_port, &bed.replica_ports);
    cfg.migration = Some(pgshift::config::MigrationConfig {
        state_file: state.display().to_string(),
        target: pgshift::config::BackendConfig { host: "127.0.0.1".into(), port: bed.target_port },
        verify_database: database.into(),
        sync: pgshift::config::SyncChoice::Logical,
        admin_user: "app".into(),
        databases: vec![database.into()],
        ..Default::default()
    });
    cfg.proxy.default_pool_size = 8;
    cfg
}

fn state_file(name: &str) -> std::path::PathBuf {
    let f = std::env::temp_dir().join(format!("pgshift-miglog-{name}-{}.json", std::process::id()));
    let _ = std::fs::remove_file(&f);
    f
}

/// One workload client: inserts (defaults from now(), random() and sequences), updates, deletes,
/// a transaction over two tables, reads; counts errors.
async fn worker(port: u16, db: String, n: u64, stop: Arc<AtomicBool>, errors: Arc<AtomicU64>) {
    let c = common::connect(port, "app", "app", &db).await;
    let (mut i, mut mine) = (0i64, vec![0i64; 2]); // this worker's last two rows
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let r = async {
            let id: i64 = c.query_one("insert into items(v, note) values ($1, 'w') returning id", &[&i]).await?.get(0);
            let (older, previous) = (mine[0], mine[1]);
            mine = vec![previous, id];
            if i % 3 == 0 {
                c.execute("update items set v = v + 1, at = now(), r = random() where id = $1", &[&previous]).await?;
            }
            if i % 5 == 0 {
                c.batch_execute(&format!(
                    "begin; insert into events(item) values ({id}); delete from items where id = {older}; \
                     insert into kv values ('w{n}', now()::text) on conflict (k) do update set v = excluded.v; commit"
                ))
                .await?;
            }
            let seen: i64 = c.query_one("select count(*) from items where id = $1", &[&id]).await?.get(0);
            Ok::<_, tokio_postgres::Error>(seen)
        }
        .await;
        if let Ok(seen) = r.as_ref().map(|n| *n).map_err(|_| ()) {
            if seen != 1 {
                eprintln!("worker {n}: its own row {i} was not there to read back");
                errors.fetch_add(1, Ordering::Relaxed);
            }
            continue;
        }
        if let Err(e) = r {
            eprintln!("worker {n}: {e:?}");
            errors.fetch_add(1, Ordering::Relaxed);
        }
        if c.is_closed() {
            eprintln!("worker {n}: its connection was closed; stopping");
            return;
        }
    }
}

/// Each table's rows in key order as one digest, and each sequence's position.
async fn fingerprint(port: u16, db: &str) -> Vec<String> {
    let c = common::connect(port, "app", "app", db).await;
    let mut out = Vec::new();
    for (t, key) in [("items", "id"), ("events", "id"), ("kv", "k")] {
        let row = c
            .query_one(&format!("select count(*)::text || ' ' || coalesce(md5(string_agg(t::text, '|' order by {key})), '') from {t} t"), &[])
            .await
            .unwrap();
        out.push(format!("{t}: {}", row.get::<_, String>(0)));
    }
    for row in c.query("select sequencename, coalesce(last_value, 0) from pg_sequences order by 1", &[]).await.unwrap()
    {
        out.push(format!("sequence {}: {}", row.get::<_, String>(0), row.get::<_, i64>(1)));
    }
    out
}

async fn wait_copied(shared: &pgshift::shared::Shared) {
    for _ in 0..600 {
        let s = control::status(shared).unwrap();
        if s.logical.iter().all(|d| d.tables > 0 && d.tables_copied == d.tables) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the initial copy did not finish: {:?}", control::status(shared).unwrap().logical);
}

/// (publications, subscriptions, pgshift slots) on a server.
async fn leftovers(port: u16, db: &str) -> (i64, i64, i64) {
    let c = common::connect(port, "app", "app", db).await;
    let row = c
        .query_one(
            "select (select count(*) from pg_publication), \
                    (select count(*) from pg_subscription s join pg_database d on d.oid = s.subdbid where d.datname = current_database()), \
                    (select count(*) from pg_replication_slots where slot_name like 'pgshift%' and database = current_database())",
            &[],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1), row.get(2))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_phase_forward_and_back_under_load_leaves_identical_copies() {
    let bed = common::shared_bed();
    let db = "miglog_roundtrip";
    fresh_database(db, true).await;
    let state = state_file("roundtrip");
    let mut cfg = config(db, &state);
    if let Some(m) = cfg.migration.as_mut() {
        m.verify_interval = pgshift::config::Dur::secs(1); // scheduled verification runs throughout
    }
    let p = proxy::start(cfg).await;
    proxy::wait_healthy(&p).await;
    let port = proxy::port(&p);
    let shared = p.shared.clone();
    let (stop, errors) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
    let workers: Vec<_> =
        (1..=6).map(|n| tokio::spawn(worker(port, db.into(), n, stop.clone(), errors.clone()))).collect();
    let step = |ms| tokio::time::sleep(Duration::from_millis(ms));

    step(500).await;
    let s = control::change_phase(&shared, Phase::DualWrite, None).await.unwrap();
    assert_eq!(s.sync.name(), "logical");
    wait_copied(&shared).await;
    step(800).await;
    control::change_phase(&shared, Phase::ShiftReads, Some(50)).await.unwrap();
    let mut on_target = 0;
    for _ in 0..40 {
        let c = common::connect(port, "app", "app", db).await;
        let got: i32 = c.query_one("select inet_server_port()", &[]).await.unwrap().get(0);
        on_target += i32::from(got as u16 == bed.target_port);
    }
    assert!((10..=30).contains(&on_target), "{on_target} of 40 sessions read from the target at 50%");
    step(800).await;
    let s = control::status(&shared).unwrap();
    let observed = s.observed_read_percent.unwrap_or(0.0);
    assert!(observed > 0.0, "the workers' reads reached the target too ({observed}%)");
    let mine = s.databases.iter().find(|d| d.database == db).expect("the database is listed");
    assert_eq!((mine.read_target, mine.read_percent), ("source+target", 50), "{mine:?}");
    assert!(mine.observed_read_percent.unwrap_or(0.0) > 0.0 && mine.lag_bytes.is_some(), "{mine:?}");
    assert!(mine.pool_connections.target > 0, "{mine:?}");
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
    assert_eq!(errors.load(Ordering::Relaxed), 0, "clients saw errors");
    // the schedule verifies on its own; once the load stops, a run finds the copies equal
    let stopped_at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let mut clean = None;
    for _ in 0..600 {
        let s = control::status(&shared).unwrap();
        let started_after_stop =
            |r: &pgshift::migration::verify::Report| r.finished_at as f64 - r.seconds > (stopped_at + 1) as f64;
        clean = s.verifications.into_iter().find(|r| r.database == db && started_after_stop(r) && r.error.is_none());
        if clean.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let clean = clean.expect("a scheduled verification after the load");
    assert_eq!(clean.differences, 0, "{clean:?}");
    assert!(clean.rows_checked > 5000, "{clean:?}");
    let url = format!("http://{}/metrics", p.admin_addr.as_deref().unwrap());
    let metrics =
        String::from_utf8(std::process::Command::new("curl").args(["-s", &url]).output().unwrap().stdout).unwrap();
    for series in [
        "pgshift_migration_verify_last_timestamp_seconds{database=\"miglog_roundtrip\"}",
        "pgshift_migration_sync_lag_bytes{database=\"miglog_roundtrip\"}",
    ] {
        assert!(metrics.contains(series), "{series} missing from /metrics");
    }

    // done waits for the source to apply the last writes and brings the sequences back, so the
    // copy left behind is exact too; then it removes what it created
    control::change_phase(&shared, Phase::Done, None).await.unwrap();
    let (source, target) = (fingerprint(bed.primary_port, db).await, fingerprint(bed.target_port, db).await);
    assert_eq!(source, target, "source and target differ");
    assert!(source[0].split(' ').nth(1).unwrap().parse::<u64>().unwrap() > 5000, "{source:?}");
    assert_eq!(leftovers(bed.primary_port, db).await, (0, 0, 0), "left on the source");
    assert_eq!(leftovers(bed.target_port, db).await, (0, 0, 0), "left on the target");
    let c = common::connect(port, "app", "app", db).await;
    let got: i32 = c.query_one("select inet_server_port()", &[]).await.unwrap().get(0);
    assert_eq!(got as u16, bed.target_port, "done: the target serves");
    drop((c, p));
    let _ = std::fs::remove_file(&state);
    drop_databases(db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_that_does_not_match_is_refused_with_every_difference() {
    let bed = common::shared_bed();
    let db = "miglog_mismatch";
    fresh_database(db, true).await;
    let t = common::connect(bed.target_port, "app", "app", db).await;
    t.batch_execute(
        "alter table items drop column note; alter table kv alter column v type varchar(10); \
         create table extra(id int); insert into kv values ('x', 'y')",
    )
    .await
    .unwrap();
    let s = common::connect(bed.primary_port, "app", "app", db).await;
    s.batch_execute("create table nokey(a int)").await.unwrap();
    t.batch_execute("create table nokey(a int)").await.unwrap();
    let state = state_file("mismatch");
    let p = proxy::start(config(db, &state)).await;
    let err = control::change_phase(&p.shared, Phase::DualWrite, None).await.unwrap_err();
    let MigrationError::Refused(d) = &err else { panic!("{err:?}") };
    for want in [
        "column public.items.note: missing on the target",
        "column public.kv.v: text on the source, character varying(10) on the target",
        "table public.extra: only on the target",
        "table public.nokey: no primary key or replica identity on the source",
        "table public.kv: holds rows on the target",
    ] {
        assert!(d.iter().any(|x| x.contains(want)), "{want:?} not in {d:#?}");
    }
    assert_eq!(control::status(&p.shared).unwrap().phase, Phase::Off, "a refusal changes nothing");
    // the admin endpoint answers 409 with the list
    let admin = p.admin_addr.clone().unwrap();
    let out = std::process::Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-H", "Authorization: Bearer test-token", "-H"])
        .args(["Content-Type: application/json", "-d", r#"{"phase":"dual_write"}"#])
        .arg(format!("http://{admin}/migration/phase"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "409");
    assert_eq!(leftovers(bed.primary_port, db).await, (0, 0, 0), "nothing created on the source");
    assert_eq!(leftovers(bed.target_port, db).await, (0, 0, 0), "nothing created on the target");
    drop((s, t, p));
    let _ = std::fs::remove_file(&state);
    drop_databases(db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cutover_whose_target_cannot_catch_up_is_aborted() {
    let bed = common::shared_bed();
    let db = "miglog_stuck";
    fresh_database(db, false).await;
    let state = state_file("stuck");
    let mut cfg = config(db, &state);
    if let Some(m) = cfg.migration.as_mut() {
        m.catchup_timeout = pgshift::config::Dur::secs(1);
    }
    let p = proxy::start(cfg).await;
    let shared = p.shared.clone();
    control::change_phase(&shared, Phase::DualWrite, None).await.unwrap();
    wait_copied(&shared).await;
    // the target's apply worker blocks behind this lock
    let mut blocker = common::connect(bed.target_port, "app", "app", db).await;
    let lock = blocker.transaction().await.unwrap();
    lock.batch_execute("lock table kv in access exclusive mode").await.unwrap();
    let c = common::connect(proxy::port(&p), "app", "app", db).await;
    c.execute("insert into kv values ('stuck', 'x')", &[]).await.unwrap();
    control::change_phase(&shared, Phase::ShiftReads, Some(0)).await.unwrap();
    let err = control::change_phase(&shared, Phase::Cutover, None).await.unwrap_err();
    assert!(matches!(err, MigrationError::CatchupTimeout { .. }), "{err:?}");
    assert!(err.to_string().contains("writes stay on the source"), "{err}");
    assert_eq!(control::status(&shared).unwrap().phase, Phase::ShiftReads);
    // clients carry on, on the source
    let port: i32 =
        c.query_one("insert into kv values ('after', 'y') returning inet_server_port()", &[]).await.unwrap().get(0);
    assert_eq!(port as u16, bed.primary_port);
    lock.rollback().await.unwrap();
    control::change_phase(&shared, Phase::Cutover, None).await.unwrap();
    let port: i32 =
        c.query_one("insert into kv values ('cut', 'z') returning inet_server_port()", &[]).await.unwrap().get(0);
    assert_eq!(port as u16, bed.target_port, "after the cutover the target takes writes");
    control::change_phase(&shared, Phase::Done, None).await.unwrap();
    assert_eq!(fingerprint(bed.primary_port, db).await, fingerprint(bed.target_port, db).await);
    drop((c, blocker, p));
    let _ = std::fs::remove_file(&state);
    drop_databases(db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_that_goes_down_is_reported_not_felt() {
    let bed = common::shared_bed();
    let db = "miglog_down";
    let target = Arc::new(tokio::task::spawn_blocking(|| common::PrivateCluster::start(0)).await.unwrap());
    let source = common::connect(bed.primary_port, "app", "app", "app").await;
    drop_databases(db).await;
    for port in [bed.primary_port, target.primary_port()] {
        let admin = common::connect(port, "app", "app", "app").await;
        admin.batch_execute(&format!("create database {db}")).await.unwrap();
        common::connect(port, "app", "app", db).await.batch_execute(SCHEMA).await.unwrap();
    }
    let state = state_file("down");
    let mut cfg = config(db, &state);
    if let Some(m) = cfg.migration.as_mut() {
        m.target.port = target.primary_port();
        m.catchup_timeout = pgshift::config::Dur::secs(1);
    }
    let p = proxy::start(cfg).await;
    let shared = p.shared.clone();
    control::change_phase(&shared, Phase::DualWrite, None).await.unwrap();
    wait_copied(&shared).await;
    let c = common::connect(proxy::port(&p), "app", "app", db).await;
    c.execute("insert into kv values ('before', 'x')", &[]).await.unwrap();
    let t2 = target.clone();
    tokio::task::spawn_blocking(move || t2.stop_node(0)).await.unwrap();
    for i in 0..50 {
        c.execute("insert into kv values ($1, 'y')", &[&format!("down{i}")])
            .await
            .expect("a dead target must not fail the client");
    }
    // reported: the target's probe fails, the monitor cannot read the copy state, the source's
    // WAL the target has not applied grows
    let mut reported = None;
    for _ in 0..100 {
        let s = control::status(&shared).unwrap();
        let d = &s.logical[0];
        if !s.target_connected && d.error.is_some() && d.lag_bytes.unwrap_or(0) > 0 {
            reported = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(reported.is_some(), "{:?}", control::status(&shared).unwrap());
    // a cutover toward it is refused and writes stay on the source
    let err = control::change_phase(&shared, Phase::ShiftReads, Some(0))
        .await
        .and(control::change_phase(&shared, Phase::Cutover, None).await)
        .unwrap_err();
    eprintln!("cutover with the target down: {err}");
    let port: i32 =
        c.query_one("insert into kv values ('after', 'z') returning inet_server_port()", &[]).await.unwrap().get(0);
    assert_eq!(port as u16, bed.primary_port);
    // the target comes back and catches up on its own
    let t2 = target.clone();
    tokio::task::spawn_blocking(move || t2.start_node(0)).await.unwrap();
    let t = common::connect(target.primary_port(), "app", "app", db).await;
    let mut rows = 0i64;
    for _ in 0..200 {
        rows = t.query_one("select count(*) from kv", &[]).await.unwrap().get(0);
        if rows == 52 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(rows, 52, "the target caught up after coming back");
    control::change_phase(&shared, Phase::Off, None).await.unwrap();
    assert_eq!(leftovers(bed.primary_port, db).await, (0, 0, 0), "off removed the slot and the publication");
    drop((c, t, source, p));
    let _ = std::fs::remove_file(&state);
    drop_databases(db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_database_moves_on_its_own_phase() {
    let bed = common::shared_bed();
    let (a, b) = ("miglog_own_a", "miglog_own_b");
    fresh_database(a, true).await;
    fresh_database(b, true).await;
    let state = state_file("own");
    let mut cfg = config(a, &state);
    if let Some(m) = cfg.migration.as_mut() {
        m.databases = vec![a.into(), b.into()];
    }
    let p = proxy::start(cfg).await;
    let shared = p.shared.clone();
    control::change_phase(&shared, Phase::DualWrite, None).await.unwrap();
    wait_copied(&shared).await;
    // a goes ahead alone
    control::change_phase_of(&shared, Some(a), Phase::ShiftReads, Some(0)).await.unwrap();
    control::change_phase_of(&shared, Some(a), Phase::Cutover, None).await.unwrap();
    let proxy_port = proxy::port(&p);
    let write = |db: &'static str| async move {
        let c = common::connect(proxy_port, "app", "app", db).await;
        let sql = "insert into kv values ('own' || random(), 'x') returning inet_server_port()";
        let port: i32 = c.query_one(sql, &[]).await.unwrap().get(0);
        port as u16
    };
    assert_eq!(write(a).await, bed.target_port, "a is cut over");
    assert_eq!(write(b).await, bed.primary_port, "b still writes to the source");
    let s = control::status(&shared).unwrap();
    let phase_of = |db: &str| s.databases.iter().find(|d| d.database == db).map(|d| (d.phase, d.own_phase));
    assert_eq!(phase_of(a), Some((Phase::Cutover, true)), "{:?}", s.databases);
    assert_eq!(phase_of(b), Some((Phase::DualWrite, false)), "{:?}", s.databases);
    control::change_phase_of(&shared, Some(a), Phase::Done, None).await.unwrap();
    assert_eq!(leftovers(bed.primary_port, a).await, (0, 0, 0));
    assert_eq!(leftovers(bed.target_port, b).await.1, 1, "b's subscription is still there");
    // then b, through the migration's phase (a keeps its own)
    control::change_phase(&shared, Phase::ShiftReads, Some(0)).await.unwrap();
    control::change_phase(&shared, Phase::Cutover, None).await.unwrap();
    assert_eq!(write(b).await, bed.target_port);
    control::change_phase(&shared, Phase::Done, None).await.unwrap();
    for db in [a, b] {
        assert_eq!(fingerprint(bed.primary_port, db).await, fingerprint(bed.target_port, db).await, "{db}");
        assert_eq!(leftovers(bed.target_port, db).await, (0, 0, 0), "{db}");
    }
    drop(p);
    let _ = std::fs::remove_file(&state);
    drop_databases(a).await;
    drop_databases(b).await;
}

/// pgbench through `port` on `db`: inserts for `secs` seconds; its whole output.
async fn pgbench_inserts(port: u16, db: &str, secs: u64, dir: &std::path::Path) -> (bool, String) {
    let script = dir.join("insert.sql");
    std::fs::write(&script, "\\set v random(1, 1000000)\ninsert into items(v, note) values (:v, 'pgbench');\n")
        .unwrap();
    let out = tokio::process::Command::new("pgbench")
        .args(["-n", "-c", "4", "-j", "2", "-T", &secs.to_string(), "-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-U", "app", "-f", script.to_str().unwrap(), db])
        .env("PGPASSWORD", "app")
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// A phase change through one instance's admin port; panics unless it succeeds within 30 s (a
/// 409 while the initial copy runs is retried).
async fn post_phase(p: &pgshift::proxy::Proxy, body: &str) {
    for _ in 0..300 {
        let (code, text) = proxy::admin_http(p, "POST", "/migration/phase", Some("test-token"), body).await;
        match code {
            200 => return,
            409 if text.contains("copy") => tokio::time::sleep(Duration::from_millis(100)).await,
            _ => panic!("{body}: {code} {text}"),
        }
    }
    panic!("{body}: still refused after 30 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_behind_haproxy_cuts_over_under_load_to_identical_copies() {
    let bed = common::shared_bed();
    let db = "miglog_fleet";
    fresh_database(db, true).await;
    let dir = common::TempDir::new("miglog-fleet");
    let name = format!("t{}-miglog", std::process::id());
    let mut fleet = Vec::new();
    for id in 1..=3u16 {
        let mut cfg = config(db, &dir.join(format!("state-{id}.json")));
        cfg.fleet = pgshift::config::FleetConfig {
            id,
            name: name.clone(),
            store: common::FLEET_STORE.into(),
            ..Default::default()
        };
        fleet.push(proxy::start(cfg).await);
    }
    let backends: Vec<_> = fleet.iter().map(haproxy::backend).collect();
    let Some(ha) = haproxy::HaProxy::start(&backends).await else {
        drop_databases(db).await;
        return;
    };
    let (stop, errors) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
    let workers: Vec<_> =
        (1..=3).map(|n| tokio::spawn(worker(ha.port, db.into(), n, stop.clone(), errors.clone()))).collect();
    let bench = {
        let (port, path) = (ha.port, dir.to_path_buf());
        tokio::spawn(async move { pgbench_inserts(port, "miglog_fleet", 12, &path).await })
    };
    let step = |ms| tokio::time::sleep(Duration::from_millis(ms));
    step(500).await;
    post_phase(&fleet[0], r#"{"phase":"dual_write"}"#).await;
    wait_copied(&fleet[0].shared).await;
    step(800).await;
    post_phase(&fleet[1], r#"{"phase":"shift_reads","read_percent":50}"#).await;
    step(800).await;
    post_phase(&fleet[2], r#"{"phase":"cutover"}"#).await;
    let answered = std::time::Instant::now();
    while !fleet.iter().all(|p| p.shared.migration.phase() == Phase::Cutover) {
        assert!(answered.elapsed() < Duration::from_secs(10), "all three cut over");
        step(2).await;
    }
    println!("cutover in force on all three {} ms after the answer", answered.elapsed().as_millis());
    let (ok, text) = bench.await.unwrap();
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    assert!(ok && text.contains("number of failed transactions: 0"), "pgbench through HAProxy:\n{text}");
    assert_eq!(errors.load(Ordering::Relaxed), 0, "clients saw errors");
    post_phase(&fleet[0], r#"{"phase":"done"}"#).await;
    let (source, target) = (fingerprint(bed.primary_port, db).await, fingerprint(bed.target_port, db).await);
    assert_eq!(source, target, "source and target differ");
    let tps = text.lines().find(|l| l.starts_with("tps")).unwrap_or_default().to_string();
    println!("three instances behind HAProxy cut over under load: {source:?}; pgbench {tps}");
    drop((ha, fleet));
    drop_databases(db).await;
}
