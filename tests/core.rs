//! The core proxy against a real PostgreSQL: queries, COPY, cancel, errors, pooling limits,
//! login failures, dirty-connection cleanup, Flush, and pgbench.

mod common;

use common::proxy;
use std::time::Duration;
use tokio_postgres::error::SqlState;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_and_extended_queries() {
    let p = proxy::primary_only().await;
    let c = common::connect(proxy::port(&p), "app", "app", "app").await;
    let rows = c.simple_query("select 1; select 'two'").await.unwrap();
    assert_eq!(rows.iter().filter(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_))).count(), 2);
    let row = c.query_one("select $1::int + 1, $2::text", &[&41i32, &"x"]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 42);
    assert_eq!(row.get::<_, &str>(1), "x");
    // a named prepared statement reused many times, across pooled server connections
    let stmt = c.prepare("select $1::bigint * 2").await.unwrap();
    for i in 0..50i64 {
        assert_eq!(c.query_one(&stmt, &[&i]).await.unwrap().get::<_, i64>(0), i * 2);
    }
    // empty query and notices pass through
    c.simple_query("").await.unwrap();
    c.batch_execute("do $$ begin raise notice 'hello'; end $$").await.unwrap();
}

/// A request, and an answer, larger than what the relay buffers for a socket before it stops
/// reading the other one: the frames held back move on once the output drains, whether it
/// drained at once or only after a wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_and_answers_larger_than_the_relay_buffer() {
    let p = proxy::primary_only().await;
    let c = common::connect(proxy::port(&p), "app", "app", "app").await;
    for n in [40_000i64, 300_000] {
        // a Bind of n * 12 bytes, then Describe, Execute and Sync in the same request
        let ids: Vec<i64> = (0..n).collect();
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&ids];
        let q = c.query_one("select count(*), sum(x)::bigint from unnest($1::bigint[]) x where x % 7 = 0", &params);
        let row = tokio::time::timeout(Duration::from_secs(60), q).await.expect("the request hung").unwrap();
        let multiples = (0..n).filter(|x| x % 7 == 0);
        assert_eq!(row.get::<_, i64>(0), multiples.clone().count() as i64);
        assert_eq!(row.get::<_, i64>(1), multiples.sum::<i64>());
    }
    // an answer of about 2 MB, read in full, then a small query on the same connection
    let q = c.query("select repeat('y', 200) from generate_series(1, 10000)", &[]);
    let rows = tokio::time::timeout(Duration::from_secs(60), q).await.expect("the answer hung").unwrap();
    assert_eq!(rows.len(), 10_000);
    assert!(rows.iter().all(|r| r.get::<_, &str>(0).len() == 200));
    assert_eq!(c.query_one("select 1", &[]).await.unwrap().get::<_, i32>(0), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_both_ways_is_byte_exact() {
    use futures_util::{SinkExt, StreamExt};
    let p = proxy::primary_only().await;
    let c = common::connect(proxy::port(&p), "app", "app", "app").await;
    c.batch_execute("drop table if exists core_copy; create table core_copy(id int primary key, t text)")
        .await
        .unwrap();
    let mut data = Vec::new();
    for i in 0..100_000 {
        data.extend_from_slice(format!("{i}\trow number {i} with some padding ü\n").as_bytes());
    }
    let sink = c.copy_in("copy core_copy from stdin").await.unwrap();
    futures_util::pin_mut!(sink);
    for chunk in data.chunks(64 * 1024) {
        sink.send(bytes::Bytes::copy_from_slice(chunk)).await.unwrap();
    }
    assert_eq!(sink.finish().await.unwrap(), 100_000);
    let stream = c.copy_out("copy (select * from core_copy order by id) to stdout").await.unwrap();
    futures_util::pin_mut!(stream);
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk.unwrap());
    }
    assert!(out == data, "COPY OUT differs from what went in");
    c.batch_execute("drop table core_copy").await.unwrap();
}

/// COPY FROM STDIN through tokio-postgres that PostgreSQL fails on a bad row: the client gets
/// the error, and the server connection stays in the pool (same backend before and after, with a
/// pool of one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_failing_on_a_bad_row_keeps_its_server() {
    use futures_util::SinkExt;
    let p = proxy::with_pool(1).await;
    let c = common::connect(proxy::port(&p), "app", "app", "app").await;
    c.batch_execute("drop table if exists core_copy_bad; create table core_copy_bad(id int)").await.unwrap();
    let pid: i32 = c.query_one("select pg_backend_pid()", &[]).await.unwrap().get(0);
    let sink = c.copy_in("copy core_copy_bad from stdin").await.unwrap();
    futures_util::pin_mut!(sink);
    let sent = sink.send(bytes::Bytes::from_static(b"1\nnot a number\n3\n")).await;
    let err = match sent {
        Ok(()) => sink.finish().await.unwrap_err(),
        Err(e) => e,
    };
    assert_eq!(err.code(), Some(&SqlState::INVALID_TEXT_REPRESENTATION), "{err}");
    let after: i32 = c.query_one("select pg_backend_pid()", &[]).await.unwrap().get(0);
    assert_eq!(after, pid, "the failed COPY cost the pool its server connection");
    let n: i64 = c.query_one("select count(*) from core_copy_bad", &[]).await.unwrap().get(0);
    assert_eq!(n, 0, "a failed COPY leaves no rows");
    c.batch_execute("drop table core_copy_bad").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_reaches_the_running_query() {
    let p = proxy::primary_only().await;
    let c = common::connect(proxy::port(&p), "app", "app", "app").await;
    let token = c.cancel_token();
    let canceller = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    });
    let started = std::time::Instant::now();
    let err = c.simple_query("select pg_sleep(10)").await.unwrap_err();
    canceller.await.unwrap();
    assert_eq!(err.code(), Some(&SqlState::QUERY_CANCELED), "{err}");
    assert!(started.elapsed() < Duration::from_secs(9), "cancel did not stop the query");
    assert_eq!(c.query_one("select 1", &[]).await.unwrap().get::<_, i32>(0), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_in_transaction_then_rollback() {
    let p = proxy::primary_only().await;
    let c = common::connect(proxy::port(&p), "app", "app", "app").await;
    c.batch_execute("begin").await.unwrap();
    let err = c.batch_execute("select 1/0").await.unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::DIVISION_BY_ZERO));
    let err = c.batch_execute("select 1").await.unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::IN_FAILED_SQL_TRANSACTION));
    c.batch_execute("rollback").await.unwrap();
    assert_eq!(c.query_one("select 2", &[]).await.unwrap().get::<_, i32>(0), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_clients_share_five_connections() {
    let bed = common::shared_bed();
    common::superuser_exec(bed.primary_port, "drop database if exists core_pool5");
    common::superuser_exec(bed.primary_port, "create database core_pool5 owner app");
    let p = proxy::primary_only().await;
    let port = proxy::port(&p);
    let watcher = tokio::spawn(async move {
        let mut max = 0;
        for _ in 0..60 {
            let n: i64 = common::superuser_exec(
                bed.primary_port,
                "select count(*) from pg_stat_activity where datname = 'core_pool5' and backend_type = 'client backend'",
            )
            .parse()
            .unwrap();
            max = max.max(n);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        max
    });
    let mut tasks = Vec::new();
    for i in 0..200 {
        tasks.push(tokio::spawn(async move {
            let c = common::connect(port, "app", "app", "core_pool5").await;
            for _ in 0..5 {
                let v: i32 = c.query_one("select $1::int from pg_sleep(0.01)", &[&i]).await.unwrap().get(0);
                assert_eq!(v, i);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let max = watcher.await.unwrap();
    assert!(max <= 5, "saw {max} server connections for a pool of 5");
    assert!(max >= 1);
    drop(p);
    tokio::time::sleep(Duration::from_millis(200)).await;
    common::superuser_exec(
        bed.primary_port,
        "select pg_terminate_backend(pid) from pg_stat_activity where datname = 'core_pool5'",
    );
    common::superuser_exec(bed.primary_port, "drop database if exists core_pool5");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_failures_carry_postgres_sqlstates() {
    let p = proxy::primary_only().await;
    let port = proxy::port(&p);
    let err = common::try_connect(port, "app", "wrong", "app").await.err().unwrap();
    assert_eq!(err.code(), Some(&SqlState::INVALID_PASSWORD), "{err}");
    let msg = err.as_db_error().unwrap().message().to_string();
    assert_eq!(msg, "password authentication failed for user \"app\"");
    let err = common::try_connect(port, "nobody", "x", "app").await.err().unwrap();
    assert_eq!(err.code(), Some(&SqlState::INVALID_PASSWORD), "unknown users look like wrong passwords: {err}");
    let err = common::try_connect(port, "app", "app", "no_such_db").await.err().unwrap();
    assert_eq!(err.code(), Some(&SqlState::INVALID_CATALOG_NAME), "{err}");
    // psql sees the same
    let out = common::psql(port, "app", "wrong", "app", "select 1");
    assert!(String::from_utf8_lossy(&out.stderr).contains("password authentication failed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_client_leaves_nothing_committed_and_a_clean_server() {
    let bed = common::shared_bed();
    let mut cfg = proxy::config(bed.primary_port, &[]);
    cfg.proxy.default_pool_size = 1;
    let p = proxy::start(cfg).await;
    let port = proxy::port(&p);
    let setup = common::connect(port, "app", "app", "app").await;
    setup.batch_execute("drop table if exists core_dirty; create table core_dirty(id int)").await.unwrap();
    drop(setup);
    // A raw client opens a transaction, inserts, sets a local setting, and vanishes.
    let (client, conn) =
        tokio_postgres::connect(&common::conn_str(port, "app", "app", "app"), tokio_postgres::NoTls).await.unwrap();
    let handle = tokio::spawn(conn);
    client.batch_execute("begin; insert into core_dirty values (1); set local statement_timeout = '1s'").await.unwrap();
    handle.abort(); // the socket closes mid-transaction
    drop(client);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The only server connection must now be clean and idle.
    let next = common::connect(port, "app", "app", "app").await;
    let n: i64 = next.query_one("select count(*) from core_dirty", &[]).await.unwrap().get(0);
    assert_eq!(n, 0, "a vanished client's transaction was committed");
    let row = next
        .query_one("select txid_current_if_assigned() is null, current_setting('statement_timeout')", &[])
        .await
        .unwrap();
    assert!(row.get::<_, bool>(0), "the next client landed inside someone else's transaction");
    assert_eq!(row.get::<_, &str>(1), "0");
    next.batch_execute("drop table core_dirty").await.unwrap();
}

/// Parse + Describe + Flush must be answered without a Sync (PgCat hung here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flush_gets_its_answer() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let p = proxy::primary_only().await;
    let mut s = common::raw::login(proxy::port(&p), "app", "app", "app").await;
    let mut msg = Vec::new();
    common::raw::parse(&mut msg, "s1", "select $1::int + 1");
    common::raw::describe_statement(&mut msg, "s1");
    msg.extend_from_slice(b"H\0\0\0\x04");
    s.write_all(&msg).await.unwrap();
    // expect ParseComplete, ParameterDescription, RowDescription without any Sync
    let tags = tokio::time::timeout(Duration::from_secs(10), common::raw::read_tags(&mut s, b'T'))
        .await
        .expect("hung after Flush");
    assert_eq!(tags, vec![b'1', b't', b'T']);
    // then Bind/Execute/Sync on the same statement works
    let mut msg = Vec::new();
    common::raw::bind(&mut msg, "s1", &[b"41"]);
    msg.extend_from_slice(b"E\0\0\0\x09\0\0\0\0\0");
    msg.extend_from_slice(b"S\0\0\0\x04");
    s.write_all(&msg).await.unwrap();
    let tags = tokio::time::timeout(Duration::from_secs(10), common::raw::read_tags(&mut s, b'Z')).await.unwrap();
    assert_eq!(tags, vec![b'2', b'D', b'C', b'Z']);
    let mut rest = [0u8; 1];
    assert!(
        tokio::time::timeout(Duration::from_millis(200), s.read(&mut rest)).await.is_err(),
        "nothing more expected"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_startup_gets_protocol_violation() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let p = proxy::primary_only().await;
    let mut s = tokio::net::TcpStream::connect(p.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await.unwrap().unwrap();
    assert_eq!(out.first(), Some(&b'E'));
    assert!(String::from_utf8_lossy(&out).contains("08P01"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newer_protocol_minor_is_negotiated_down() {
    use tokio::io::AsyncWriteExt;
    let p = proxy::primary_only().await;
    let mut s = tokio::net::TcpStream::connect(p.addr).await.unwrap();
    let mut pkt = vec![0, 0, 0, 0, 0, 3, 0, 2];
    for kv in ["user", "app", "database", "app", "_pq_.foo", "1"] {
        pkt.extend_from_slice(kv.as_bytes());
        pkt.push(0);
    }
    pkt.push(0);
    let len = pkt.len() as u32;
    pkt[..4].copy_from_slice(&len.to_be_bytes());
    s.write_all(&pkt).await.unwrap();
    let tags = common::raw::read_tags(&mut s, b'R').await;
    assert_eq!(tags[0], b'v', "NegotiateProtocolVersion first");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_client_conn_is_enforced_with_53300() {
    let bed = common::shared_bed();
    let mut cfg = proxy::config(bed.primary_port, &[]);
    cfg.proxy.max_client_conn = 2;
    let p = proxy::start(cfg).await;
    let port = proxy::port(&p);
    let a = common::connect(port, "app", "app", "app").await;
    let b = common::connect(port, "app", "app", "app").await;
    let err = common::try_connect(port, "app", "app", "app").await.err().unwrap();
    assert_eq!(err.code(), Some(&SqlState::TOO_MANY_CONNECTIONS), "{err}");
    drop((a, b));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_wait_timeout_errors_and_disconnects() {
    let bed = common::shared_bed();
    let mut cfg = proxy::config(bed.primary_port, &[]);
    cfg.proxy.default_pool_size = 1;
    cfg.proxy.query_wait_timeout = pgshift::config::Dur::secs(1);
    let p = proxy::start(cfg).await;
    let port = proxy::port(&p);
    let holder = common::connect(port, "app", "app", "app").await;
    holder.batch_execute("begin; select 1").await.unwrap();
    let waiter = common::connect(port, "app", "app", "app").await;
    let err = waiter.simple_query("select 1").await.unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::TOO_MANY_CONNECTIONS), "{err}");
    assert!(waiter.is_closed() || waiter.simple_query("select 1").await.is_err());
    holder.batch_execute("commit").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_simple_and_extended_without_failures() {
    let bed = common::shared_bed();
    let p = proxy::primary_only().await;
    let port = proxy::port(&p).to_string();
    let init = std::process::Command::new("pgbench")
        .args(["-i", "-q", "-s", "1", "-h", "127.0.0.1", "-p", &bed.primary_port.to_string(), "-U", "app", "app"])
        .env("PGPASSWORD", "app")
        .output()
        .unwrap();
    assert!(init.status.success(), "{}", String::from_utf8_lossy(&init.stderr));
    for mode in ["simple", "extended", "prepared"] {
        let out = tokio::process::Command::new("pgbench")
            .args([
                "-n",
                "-M",
                mode,
                "-c",
                "16",
                "-j",
                "2",
                "-T",
                "3",
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                "app",
                "app",
            ])
            .env("PGPASSWORD", "app")
            .output()
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "pgbench -M {mode} failed:\n{text}");
        assert!(text.contains("number of failed transactions: 0"), "pgbench -M {mode}:\n{text}");
    }
}

/// Session mode: a client keeps its server for its lifetime; DISCARD ALL runs before the next
/// client gets it, so nothing of the first client's session is visible.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_mode_resets_the_server_between_clients() {
    let bed = common::shared_bed();
    let mut cfg = proxy::config(bed.primary_port, &[]);
    cfg.proxy.pool_mode = pgshift::config::PoolMode::Session;
    cfg.proxy.default_pool_size = 1;
    let p = proxy::start(cfg).await;
    let port = proxy::port(&p);
    let a = common::connect(port, "app", "app", "app").await;
    a.batch_execute("set application_name = 'first'; create temp table sess_tmp(x int); prepare sp as select 1")
        .await
        .unwrap();
    let pid: i32 = a.query_one("select pg_backend_pid()", &[]).await.unwrap().get(0);
    for _ in 0..3 {
        assert_eq!(a.query_one("select pg_backend_pid()", &[]).await.unwrap().get::<_, i32>(0), pid);
    }
    drop(a);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let b = common::connect(port, "app", "app", "app").await;
    let row = b
        .query_one("select pg_backend_pid(), current_setting('application_name'), to_regclass('pg_temp.sess_tmp') is null, (select count(*) from pg_prepared_statements where name = 'sp')", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), pid, "the same server connection was reused");
    assert_ne!(row.get::<_, &str>(1), "first");
    assert!(row.get::<_, bool>(2), "the temp table survived");
    assert_eq!(row.get::<_, i64>(3), 0, "a prepared statement survived");
}

/// min_pool_size keeps connections warm; server_lifetime and server_idle_timeout close them;
/// the reserve pool serves a client that waited reserve_pool_timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_sizing_and_lifetimes() {
    use pgshift::config::Dur;
    let bed = common::shared_bed();
    common::superuser_exec(bed.primary_port, "drop database if exists core_sizing");
    common::superuser_exec(bed.primary_port, "create database core_sizing owner app");
    let count = move || -> i64 {
        common::superuser_exec(
            bed.primary_port,
            "select count(*) from pg_stat_activity where datname = 'core_sizing' and backend_type = 'client backend'",
        )
        .parse()
        .unwrap()
    };
    let mut cfg = proxy::config(bed.primary_port, &[]);
    cfg.proxy.default_pool_size = 2;
    cfg.proxy.min_pool_size = 2;
    cfg.proxy.reserve_pool_size = 1;
    cfg.proxy.reserve_pool_timeout = Dur::millis(300);
    cfg.proxy.server_lifetime = Dur::secs(2);
    let p = proxy::start(cfg).await;
    let port = proxy::port(&p);
    let a = common::connect(port, "app", "app", "core_sizing").await;
    a.batch_execute("select 1").await.unwrap();
    let mut warmed = 0;
    for _ in 0..40 {
        warmed = tokio::task::spawn_blocking(count).await.unwrap();
        if warmed >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(warmed >= 2, "min_pool_size did not warm the pool: {warmed}");
    // the reserve: two clients hold both connections; a third is served after reserve_pool_timeout
    let b = common::connect(port, "app", "app", "core_sizing").await;
    let c = common::connect(port, "app", "app", "core_sizing").await;
    a.batch_execute("begin; select 1").await.unwrap();
    b.batch_execute("begin; select 1").await.unwrap();
    let t = std::time::Instant::now();
    c.batch_execute("select 1").await.unwrap();
    assert!(t.elapsed() >= Duration::from_millis(250), "served before reserve_pool_timeout");
    a.batch_execute("commit").await.unwrap();
    b.batch_execute("commit").await.unwrap();
    // server_lifetime: a connection older than 2s is closed at check-in and replaced
    let before: i32 = c.query_one("select pg_backend_pid()", &[]).await.unwrap().get(0);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let mut pids = std::collections::HashSet::new();
    for _ in 0..6 {
        pids.insert(c.query_one("select pg_backend_pid()", &[]).await.unwrap().get::<_, i32>(0));
    }
    assert!(!pids.contains(&before), "a connection past server_lifetime was reused");
    drop((a, b, c));
    drop(p);
    tokio::time::sleep(Duration::from_millis(300)).await;
    common::superuser_exec(
        bed.primary_port,
        "select pg_terminate_backend(pid) from pg_stat_activity where datname = 'core_sizing'",
    );
    common::superuser_exec(bed.primary_port, "drop database if exists core_sizing");
}
