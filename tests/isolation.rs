//! One client's session is its own, against real PostgreSQL with clients sharing one server
//! connection: state changed inside functions, DO blocks and COPY never reaches the next client,
//! a late cancel never hits another client's query, pgshift's statement names are out of reach,
//! unknown messages are refused at the proxy, and a client's prepared statements are bounded.

mod common;

use common::{proxy, scalar};
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio_postgres::SimpleQueryMessage;

/// Pool counters summed over the proxy's pools: (session resets, cancel holds, cancels dropped).
fn counters(p: &pgshift::proxy::Proxy) -> (u64, u64, u64) {
    p.shared.pools.all().iter().fold((0, 0, 0), |acc, pool| {
        let s = &pool.stats;
        (
            acc.0 + s.resets.load(Ordering::Relaxed),
            acc.1 + s.cancel_holds.load(Ordering::Relaxed),
            acc.2 + s.cancels_dropped.load(Ordering::Relaxed),
        )
    })
}

/// Objects the leak tests use, made once per bed (idempotent).
fn setup_objects() {
    let port = common::shared_bed().primary_port;
    let out = common::psql(
        port,
        "postgres",
        "",
        "app",
        "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'iso_other') THEN \
         CREATE ROLE iso_other; END IF; END $$; GRANT iso_other TO app; \
         CREATE OR REPLACE FUNCTION iso_set_tenant(t text) RETURNS text LANGUAGE sql \
         AS $f$ SELECT set_config('app.tenant', t, false) $f$; \
         CREATE OR REPLACE FUNCTION iso_lock() RETURNS void LANGUAGE sql AS $f$ SELECT pg_advisory_lock(424242) $f$;",
    );
    assert!(out.status.success(), "setup failed: {}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_changed_inside_server_code_never_reaches_the_next_client() {
    setup_objects();
    let p = proxy::with_pool(1).await;
    let port = proxy::port(&p);
    let a = common::connect(port, "app", "app", "app").await;
    let b = common::connect(port, "app", "app", "app").await;

    // Pure transactions cost nothing: no reset.
    for _ in 0..20 {
        scalar(&a, "select count(*) from pg_class where relname = 'pg_class'").await;
        a.execute("select $1::int + 1", &[&1i32]).await.unwrap();
    }
    assert_eq!(counters(&p).0, 0, "proven-pure transactions must not be reset");

    a.batch_execute("DO $$ BEGIN EXECUTE 'SET ROLE iso_other'; END $$").await.unwrap();
    assert_eq!(scalar(&b, "select current_user").await.as_deref(), Some("app"), "role leaked");

    scalar(&a, "select iso_set_tenant('42')").await;
    let tenant = scalar(&b, "select current_setting('app.tenant', true)").await;
    assert!(tenant.as_deref().unwrap_or("").is_empty(), "tenant leaked: {tenant:?}");

    a.batch_execute("CREATE TABLE pg_temp.iso_secret AS SELECT 'secret'::text AS v").await.unwrap();
    let err = b.simple_query("select v from pg_temp.iso_secret").await.unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("42P01"), "temp table visible to the next client: {err}");

    scalar(&a, "select iso_lock()").await;
    let direct = common::connect(common::shared_bed().primary_port, "app", "app", "app").await;
    let got = scalar(&b, "select count(*) from pg_locks where locktype = 'advisory' and objid = 424242").await;
    assert_eq!(got.as_deref(), Some("0"), "advisory lock still held by the pooled server");
    assert_eq!(scalar(&direct, "select pg_try_advisory_lock(424242)").await.as_deref(), Some("t"));
    direct.batch_execute("select pg_advisory_unlock_all()").await.unwrap();

    a.batch_execute("DO $$ BEGIN PERFORM set_config('statement_timeout', '1', false); END $$").await.unwrap();
    assert_eq!(scalar(&b, "show statement_timeout").await.as_deref(), Some("0"));
    b.batch_execute("select pg_sleep(0.05)").await.expect("a leaked statement_timeout cancelled another client");

    // COPY (SELECT fn()) TO STDOUT runs the function too.
    let copy = a.copy_out("COPY (SELECT iso_set_tenant('7')) TO STDOUT").await.unwrap();
    let mut copy = std::pin::pin!(copy);
    while futures_util::StreamExt::next(&mut copy).await.is_some() {}
    let tenant = scalar(&b, "select current_setting('app.tenant', true)").await;
    assert!(tenant.as_deref().unwrap_or("").is_empty(), "tenant leaked through COPY: {tenant:?}");

    // The client's own tracked settings still follow it after a reset.
    a.batch_execute("set application_name = 'mine'").await.unwrap();
    scalar(&a, "select iso_set_tenant('1')").await;
    assert_eq!(scalar(&a, "select current_setting('application_name')").await.as_deref(), Some("mine"));
    assert!(counters(&p).0 >= 6, "each impure transaction was reset: {:?}", counters(&p));
}

/// A table `SELECT ... INTO` makes in pg_temp (through the search path, no `temp` in the text)
/// and a SET in disguise (`UPDATE pg_settings`, which a rule of the view turns into set_config)
/// stay with the client that made them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_select_into_pg_temp_or_a_pg_settings_update_never_reaches_the_next_client() {
    let p = proxy::with_pool(1).await;
    let port = proxy::port(&p);
    let a = common::connect(port, "app", "app", "app").await;
    let b = common::connect(port, "app", "app", "app").await;

    a.batch_execute("SET search_path = pg_temp, public").await.unwrap();
    a.simple_query("select 'secret'::text as v into iso_into").await.unwrap();
    let err = b.simple_query("select v from pg_temp.iso_into").await.unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("42P01"), "temp table visible to the next client: {err}");

    // The update pins `a` to the server; the next client gets it once `a` leaves (and it is reset).
    a.simple_query("update pg_settings set setting = '1' where name = 'statement_timeout'").await.unwrap();
    assert_eq!(scalar(&a, "show statement_timeout").await.as_deref(), Some("1ms"));
    drop(a);
    assert_eq!(scalar(&b, "show statement_timeout").await.as_deref(), Some("0"), "a SET in disguise leaked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_cancel_never_hits_the_next_clients_query() {
    let p = proxy::with_pool(1).await;
    let port = proxy::port(&p);
    let canceller = common::connect(port, "app", "app", "app").await;
    let victim = common::connect(port, "app", "app", "app").await;
    let token = canceller.cancel_token();
    let victim_task = tokio::spawn(async move {
        let mut cancelled = 0;
        for _ in 0..400 {
            if let Err(e) = victim.simple_query("select pg_sleep(0.001)").await {
                assert_eq!(e.code().map(|c| c.code()), Some("57014"), "unexpected error: {e}");
                cancelled += 1;
            }
        }
        cancelled
    });
    // Quick queries, each cancelled right as (or after) it finishes: the cancels race the release.
    for _ in 0..150 {
        let q = canceller.simple_query("select 1");
        let c = token.cancel_query(tokio_postgres::NoTls);
        let (_, _) = tokio::join!(q, c);
    }
    let cancelled = victim_task.await.unwrap();
    assert_eq!(cancelled, 0, "another client's late cancel hit the victim's queries");
    let (_, holds, dropped) = counters(&p);
    assert!(holds + dropped > 0, "the races were counted (holds {holds}, dropped {dropped})");
    // A cancel of a query that really runs still works.
    let long = tokio::spawn({
        let c = common::connect(port, "app", "app", "app").await;
        let t = c.cancel_token();
        async move {
            let q = tokio::spawn(async move { c.simple_query("select pg_sleep(30)").await.map(|_| ()) });
            tokio::time::sleep(Duration::from_millis(500)).await;
            t.cancel_query(tokio_postgres::NoTls).await.unwrap();
            q.await.unwrap()
        }
    });
    let err = long.await.unwrap().unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("57014"));
    // SHOW POOLS carries the counters.
    let console = common::connect(port, "app", "app", "pgbouncer").await;
    let rows = console.simple_query("SHOW POOLS").await.unwrap();
    let row = rows.iter().find_map(|m| match m {
        SimpleQueryMessage::Row(r) if r.get("database") == Some("app") => Some(r),
        _ => None,
    });
    let row = row.expect("a pool row for app");
    let shown: u64 = row.get("cancel_holds").unwrap().parse::<u64>().unwrap()
        + row.get("cancels_dropped").unwrap().parse::<u64>().unwrap();
    let (_, holds_now, dropped_now) = counters(&p);
    assert_eq!(shown, holds_now + dropped_now, "SHOW POOLS shows the counters");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgshift_statement_names_are_out_of_reach() {
    let p = proxy::with_pool(1).await;
    let port = proxy::port(&p);
    let owner = common::connect(port, "app", "app", "app").await;
    let other = common::connect(port, "app", "app", "app").await;
    let stmt = owner.prepare("select $1::int + 41").await.unwrap();
    assert_eq!(owner.query_one(&stmt, &[&1i32]).await.unwrap().get::<_, i32>(0), 42);
    let name = scalar(&other, "select name from pg_prepared_statements where statement like 'select $1::int + 41%'")
        .await
        .expect("the statement is prepared on the shared server");
    assert!(name.starts_with("pgshift_") && name.len() == "pgshift_".len() + 16, "name {name}");

    for sql in [format!("DEALLOCATE {name}"), format!("PREPARE {name} AS select 1"), format!("EXECUTE {name}(1)")] {
        let err = other.simple_query(&sql).await.unwrap_err();
        assert_eq!(err.code().map(|c| c.code()), Some("42501"), "{sql}: {err}");
    }
    let err = other.simple_query("PREPARE pgshift_planted AS select 1").await.unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("42501"));
    // Through the extended protocol too, and inside a transaction the refusal fails it as any
    // error would (the insert before it is rolled back).
    let err = other.execute(&format!("DEALLOCATE {name}"), &[]).await.unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("42501"), "{err}");
    other.batch_execute("drop table if exists iso_names_tx; create table iso_names_tx (v int)").await.unwrap();
    other.batch_execute("begin; insert into iso_names_tx values (1)").await.unwrap();
    let err = other.simple_query(&format!("DEALLOCATE {name}")).await.unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("42501"));
    other.batch_execute("commit").await.unwrap();
    assert_eq!(scalar(&other, "select count(*) from iso_names_tx").await.as_deref(), Some("0"));
    assert_eq!(owner.query_one(&stmt, &[&1i32]).await.unwrap().get::<_, i32>(0), 42);

    // Server-side code can still drop it: the owner does not notice.
    other.batch_execute(&format!("DO $$ BEGIN EXECUTE 'DEALLOCATE {name}'; END $$")).await.unwrap();
    assert_eq!(owner.query_one(&stmt, &[&2i32]).await.unwrap().get::<_, i32>(0), 43);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_frontend_messages_are_refused_at_the_proxy() {
    use tokio::io::AsyncWriteExt;
    let p = proxy::with_pool(1).await;
    let port = proxy::port(&p);
    let mut s = common::raw::login(port, "app", "app", "app").await;
    s.write_all(&[b'Y', 0, 0, 0, 4]).await.unwrap();
    let frames = common::raw::read_frames(&mut s, b'E').await;
    let (_, body) = frames.iter().find(|(t, _)| *t == b'E').expect("an ErrorResponse");
    let text = String::from_utf8_lossy(body);
    assert!(text.contains("08P01") && text.contains("invalid frontend message type"), "{text}");
    assert_eq!(counters(&p), (0, 0, 0));
    assert!(p.shared.pools.all().iter().all(|pool| pool.snapshot().sv_active == 0));
    // Other clients are unaffected.
    let c = common::connect(port, "app", "app", "app").await;
    assert_eq!(scalar(&c, "select 1").await.as_deref(), Some("1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clients_named_statements_are_bounded() {
    let mut cfg = proxy::config(common::shared_bed().primary_port, &[]);
    cfg.proxy.default_pool_size = 1;
    cfg.proxy.max_client_prepared_statements = 5;
    let p = proxy::start(cfg).await;
    let c = common::connect(proxy::port(&p), "app", "app", "app").await;
    let mut kept = Vec::new();
    for i in 0..5 {
        kept.push(c.prepare(&format!("select {i} + $1::int")).await.unwrap());
    }
    let err = c.prepare("select 99 + $1::int").await.unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("53400"), "{err}");
    let msg = err.as_db_error().map(|e| e.message().to_string()).unwrap_or_default();
    assert!(msg.contains("max_client_prepared_statements"), "{msg}");
    // The session goes on, and its statements still work.
    assert_eq!(c.query_one(&kept[4], &[&1i32]).await.unwrap().get::<_, i32>(0), 5);
    assert_eq!(scalar(&c, "select 1").await.as_deref(), Some("1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_message_cannot_take_unbounded_memory() {
    use tokio::io::AsyncWriteExt;
    let mut cfg = proxy::config(common::shared_bed().primary_port, &[]);
    cfg.proxy.default_pool_size = 1;
    cfg.proxy.max_packet_size = 1024 * 1024;
    let p = proxy::start(cfg).await;
    let port = proxy::port(&p);
    // A Query declaring 300 MB: refused from its header, before pgshift buffers any of it.
    let mut s = common::raw::login(port, "app", "app", "app").await;
    let mut head = vec![b'Q'];
    head.extend_from_slice(&(300_000_000u32).to_be_bytes());
    head.extend_from_slice(b"select '");
    s.write_all(&head).await.unwrap();
    let frames = common::raw::read_frames(&mut s, b'E').await;
    let (_, body) = frames.iter().find(|(t, _)| *t == b'E').expect("an ErrorResponse");
    let text = String::from_utf8_lossy(body);
    assert!(text.contains("54000") && text.contains("max_packet_size"), "{text}");
    // Under the limit, a large statement still runs.
    let c = common::connect(port, "app", "app", "app").await;
    let big = format!("select length('{}')", "x".repeat(900_000));
    assert_eq!(scalar(&c, &big).await.as_deref(), Some("900000"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_replaced_under_pgshifts_name_never_runs_for_its_owner() {
    let p = proxy::with_pool(1).await;
    let port = proxy::port(&p);
    let owner = common::connect(port, "app", "app", "app").await;
    let attacker = common::connect(port, "app", "app", "app").await;
    let stmt = owner.prepare("select $1::int * 2").await.unwrap();
    assert_eq!(owner.query_one(&stmt, &[&21i32]).await.unwrap().get::<_, i32>(0), 42);
    let name = scalar(&attacker, "select name from pg_prepared_statements where statement like 'select $1::int * 2%'")
        .await
        .expect("the statement is on the shared server");
    // Same shape, other meaning, planted under pgshift's name from server-side code.
    attacker
        .batch_execute(&format!(
            "DO $$ BEGIN EXECUTE 'DEALLOCATE {name}'; EXECUTE 'PREPARE {name}(int) AS select $1 * 0 - 666'; END $$"
        ))
        .await
        .unwrap();
    assert_eq!(owner.query_one(&stmt, &[&21i32]).await.unwrap().get::<_, i32>(0), 42, "the planted statement ran");
}
