//! Session state in transaction mode against real PostgreSQL: SET replayed and never leaked,
//! prepared statements across servers, stale plans after DDL, LISTEN/NOTIFY fan-out, pinning and
//! rejecting session-only features.

mod common;

use common::proxy;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_follow_their_client_and_never_leak() {
    let p = proxy::with_pool(3).await;
    let port = proxy::port(&p);
    let setter = common::connect(port, "app", "app", "app").await;
    setter.batch_execute("set application_name = 'leaky'; set search_path = 'pg_catalog', 'public'").await.unwrap();
    setter.batch_execute("set statement_timeout = '42s'").await.unwrap();
    let mut others = Vec::new();
    for _ in 0..20 {
        others.push(common::connect(port, "app", "app", "app").await);
    }
    for round in 0..10 {
        for c in &others {
            let row = c
                .query_one("select current_setting('application_name'), current_setting('search_path'), current_setting('statement_timeout')", &[])
                .await
                .unwrap();
            assert_ne!(row.get::<_, &str>(0), "leaky", "round {round}: application_name leaked");
            assert_eq!(row.get::<_, &str>(1), "\"$user\", public", "round {round}: search_path leaked");
            assert_eq!(row.get::<_, &str>(2), "0", "round {round}: statement_timeout leaked");
        }
        let row = setter
            .query_one("select current_setting('application_name'), current_setting('statement_timeout')", &[])
            .await
            .unwrap();
        assert_eq!(row.get::<_, &str>(0), "leaky", "round {round}: the setter lost its setting");
        assert_eq!(row.get::<_, &str>(1), "42s");
    }
    // as in PostgreSQL: a BEGIN inside a multi-statement string makes the statements before it part
    // of the block, so the ROLLBACK undoes the RESET as well
    setter.batch_execute("reset statement_timeout; begin; set application_name = 'rolled'; rollback").await.unwrap();
    let row = setter
        .query_one("select current_setting('application_name'), current_setting('statement_timeout')", &[])
        .await
        .unwrap();
    assert_eq!((row.get::<_, &str>(0), row.get::<_, &str>(1)), ("leaky", "42s"));
    setter.batch_execute("reset statement_timeout").await.unwrap();
    let row = setter.query_one("select current_setting('statement_timeout')", &[]).await.unwrap();
    assert_eq!(row.get::<_, &str>(0), "0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_statements_across_servers_and_sql_level_commands() {
    let p = proxy::with_pool(2).await;
    let port = proxy::port(&p);
    let mut clients = Vec::new();
    for _ in 0..6 {
        clients.push(common::connect(port, "app", "app", "app").await);
    }
    let mut stmts = Vec::new();
    for c in &clients {
        stmts.push(c.prepare("select $1::int * 3").await.unwrap());
    }
    for i in 0..30i32 {
        for (c, s) in clients.iter().zip(&stmts) {
            assert_eq!(c.query_one(s, &[&i]).await.unwrap().get::<_, i32>(0), i * 3);
        }
    }
    // DEALLOCATE of a protocol-level name is answered by the proxy; the statement is gone
    let c = &clients[0];
    let mut s = common::raw::login(port, "app", "app", "app").await;
    let mut msg = Vec::new();
    common::raw::parse(&mut msg, "mine", "select 1");
    msg.extend_from_slice(b"S\0\0\0\x04");
    common::raw::query(&mut msg, "DEALLOCATE mine");
    s.write_all(&msg).await.unwrap();
    let tags = common::raw::read_tags(&mut s, b'Z').await;
    assert_eq!(tags, vec![b'1', b'Z']);
    let frames = common::raw::read_frames(&mut s, b'Z').await;
    assert_eq!(frames[0].0, b'C', "{frames:?}");
    // SQL-level PREPARE/EXECUTE pins the session and works
    c.batch_execute("prepare sq(int) as select $1 + 100").await.unwrap();
    for _ in 0..5 {
        let rows = c.simple_query("execute sq(1)").await.unwrap();
        let value = rows.iter().find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        });
        assert_eq!(value.as_deref(), Some("101"));
    }
    assert!(p.shared.stats.pins.lock().unwrap().get("sql_prepare").copied().unwrap_or(0) >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_plan_after_ddl_is_reprepared_once() {
    let p = proxy::with_pool(1).await;
    let port = proxy::port(&p);
    let admin = common::connect(port, "app", "app", "app").await;
    admin
        .batch_execute("drop table if exists ss_stale; create table ss_stale(a int); insert into ss_stale values (1)")
        .await
        .unwrap();
    let mut s = common::raw::login(port, "app", "app", "app").await;
    let mut msg = Vec::new();
    common::raw::parse(&mut msg, "st", "select * from ss_stale");
    msg.extend_from_slice(b"S\0\0\0\x04");
    s.write_all(&msg).await.unwrap();
    assert_eq!(common::raw::read_tags(&mut s, b'Z').await, vec![b'1', b'Z']);
    let execute = || {
        let mut m = Vec::new();
        common::raw::bind(&mut m, "st", &[]);
        m.extend_from_slice(b"D\0\0\0\x06P\0"); // describe the portal: the client gets the row shape
        m.extend_from_slice(b"E\0\0\0\x09\0\0\0\0\0");
        m.extend_from_slice(b"S\0\0\0\x04");
        m
    };
    s.write_all(&execute()).await.unwrap();
    assert_eq!(common::raw::read_tags(&mut s, b'Z').await, vec![b'2', b'T', b'D', b'C', b'Z']);
    admin.batch_execute("alter table ss_stale add column b text default 'new'").await.unwrap();
    s.write_all(&execute()).await.unwrap();
    let frames = common::raw::read_frames(&mut s, b'Z').await;
    let tags: Vec<u8> = frames.iter().map(|(t, _)| *t).collect();
    assert_eq!(tags, vec![b'2', b'T', b'D', b'C', b'Z'], "{frames:?}");
    let row = &frames[2].1;
    assert_eq!(u16::from_be_bytes([row[0], row[1]]), 2, "the re-run returns the new row shape");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_notify_fans_out_without_holding_a_server() {
    use futures_util::StreamExt;
    let p = proxy::with_pool(2).await;
    let port = proxy::port(&p);
    let (listener, mut conn) =
        tokio_postgres::connect(&common::conn_str(port, "app", "app", "app"), tokio_postgres::NoTls).await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(Ok(m)) = messages.next().await {
            if let tokio_postgres::AsyncMessage::Notification(n) = m {
                let _ = tx.send((n.channel().to_string(), n.payload().to_string()));
            }
        }
    });
    listener.batch_execute("LISTEN ss_events").await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await; // the shared listener connection subscribes
    let idle: usize = p.shared.pools.all().iter().map(|pl| pl.snapshot().sv_active).sum();
    assert_eq!(idle, 0, "a listening client must not hold a server connection");
    let sender = common::connect(port, "app", "app", "app").await;
    for i in 0..3 {
        sender.batch_execute(&format!("NOTIFY ss_events, 'hello {i}'")).await.unwrap();
    }
    sender.batch_execute("select pg_notify('ss_other', 'not for you')").await.unwrap();
    for i in 0..3 {
        let (ch, payload) =
            tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.expect("notification delivered").unwrap();
        assert_eq!((ch.as_str(), payload), ("ss_events", format!("hello {i}")));
    }
    listener.batch_execute("UNLISTEN ss_events").await.unwrap();
    sender.batch_execute("NOTIFY ss_events, 'after unlisten'").await.unwrap();
    assert!(tokio::time::timeout(Duration::from_millis(500), rx.recv()).await.is_err());
    // the listening client still runs queries normally
    assert_eq!(listener.query_one("select 5", &[]).await.unwrap().get::<_, i32>(0), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_only_features_pin_or_are_rejected() {
    let p = proxy::with_pool(2).await;
    let c = common::connect(proxy::port(&p), "app", "app", "app").await;
    c.batch_execute("select pg_advisory_lock(4242)").await.unwrap();
    let pid: i32 = c.query_one("select pg_backend_pid()", &[]).await.unwrap().get(0);
    for _ in 0..5 {
        assert_eq!(
            c.query_one("select pg_backend_pid()", &[]).await.unwrap().get::<_, i32>(0),
            pid,
            "pinned to one server"
        );
    }
    let unlocked: bool = c.query_one("select pg_advisory_unlock(4242)", &[]).await.unwrap().get(0);
    assert!(unlocked, "the unlock ran on the server holding the lock");
    c.batch_execute("create temp table ss_tmp(x int); insert into ss_tmp values (1)").await.unwrap();
    let n: i64 = c.query_one("select count(*) from ss_tmp", &[]).await.unwrap().get(0);
    assert_eq!(n, 1);
    drop(p);

    let mut cfg = proxy::config(common::shared_bed().primary_port, &[]);
    cfg.proxy.session_features = pgshift::config::SessionFeatures::Reject;
    let p = proxy::start(cfg).await;
    let c = common::connect(proxy::port(&p), "app", "app", "app").await;
    let err = c.batch_execute("select pg_advisory_lock(1)").await.unwrap_err();
    let db = err.as_db_error().unwrap();
    assert_eq!(db.code().code(), "0A000");
    assert!(db.message().contains("transaction pooling"), "{}", db.message());
    assert_eq!(c.query_one("select 1", &[]).await.unwrap().get::<_, i32>(0), 1, "the session goes on");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_prepared_64_clients_on_a_pool_of_10() {
    let bed = common::shared_bed();
    let init = tokio::process::Command::new("pgbench")
        .args(["-i", "-q", "-s", "1", "-h", "127.0.0.1", "-p", &bed.primary_port.to_string(), "-U", "app", "app"])
        .env("PGPASSWORD", "app")
        .output()
        .await
        .unwrap();
    assert!(init.status.success());
    let p = proxy::with_pool(10).await;
    let out = tokio::process::Command::new("pgbench")
        .args(["-n", "-S", "-M", "prepared", "-c", "64", "-j", "2", "-T", "5", "-h", "127.0.0.1"])
        .args(["-p", &proxy::port(&p).to_string(), "-U", "app", "app"])
        .env("PGPASSWORD", "app")
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("number of failed transactions: 0"), "{text}");
}
