//! Faults, bad input and overload against real PostgreSQL: a killed primary, a stalled server,
//! clients that vanish mid-work, slow or garbage clients, and cancel while waiting for a pool.

mod common;

use common::{proxy, until};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn pool_active(p: &pgshift::proxy::Proxy) -> (usize, usize) {
    p.shared.pools.all().iter().map(|pl| pl.snapshot()).fold((0, 0), |(a, w), s| (a + s.sv_active, w + s.cl_waiting))
}

/// SIGKILL of the primary under load: errors are proper and prompt, nothing committed is lost,
/// and service resumes by itself soon after PostgreSQL is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_killed_under_load() {
    let cluster = Arc::new(tokio::task::spawn_blocking(|| common::PrivateCluster::start(0)).await.unwrap());
    let p = proxy::start(proxy::config(cluster.primary_port(), &[])).await;
    let port = proxy::port(&p);
    common::connect(port, "app", "app", "app")
        .await
        .batch_execute("create table kill_t(id bigint primary key)")
        .await
        .unwrap();
    let next_id = Arc::new(AtomicU64::new(1));
    let stop_at = Instant::now() + Duration::from_secs(9);
    let back_at = Arc::new(std::sync::Mutex::new(None::<Instant>));
    let mut workers = Vec::new();
    for _ in 0..8 {
        let (next_id, back_at) = (next_id.clone(), back_at.clone());
        workers.push(tokio::spawn(async move {
            let (mut committed, mut errors, mut longest) = (Vec::new(), 0u32, Duration::ZERO);
            let mut first_ok_after_back: Option<Instant> = None;
            let mut client = None;
            while Instant::now() < stop_at {
                if client.is_none() {
                    client = common::try_connect(port, "app", "app", "app").await.ok();
                    if client.is_none() {
                        errors += 1;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                }
                let c = client.as_ref().unwrap();
                let id = next_id.fetch_add(1, Ordering::Relaxed) as i64;
                let t = Instant::now();
                let sql = format!("begin; set local synchronous_commit = on; insert into kill_t values ({id}); commit");
                let r =
                    tokio::time::timeout(Duration::from_secs(15), c.batch_execute(&sql)).await.expect("a call hung");
                longest = longest.max(t.elapsed());
                match r {
                    Ok(()) => {
                        committed.push(id);
                        if first_ok_after_back.is_none() && back_at.lock().unwrap().is_some() {
                            first_ok_after_back = Some(Instant::now());
                        }
                    }
                    Err(e) => {
                        errors += 1;
                        if let Some(db) = e.as_db_error() {
                            let code = db.code().code();
                            assert!(
                                code.starts_with("08") || code.starts_with("57") || code == "25P02" || code == "53300",
                                "unexpected error {code}: {}",
                                db.message()
                            );
                        }
                        if c.is_closed() {
                            client = None;
                        }
                    }
                }
            }
            (committed, errors, longest, first_ok_after_back)
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let c2 = cluster.clone();
    tokio::task::spawn_blocking(move || c2.kill_node(0)).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let c2 = cluster.clone();
    tokio::task::spawn_blocking(move || c2.start_node(0)).await.unwrap();
    let back = Instant::now();
    *back_at.lock().unwrap() = Some(back);
    let mut all = Vec::new();
    let mut recovered = Vec::new();
    for w in workers {
        let (committed, errors, longest, first_ok) = w.await.unwrap();
        eprintln!("worker: {} commits, {errors} errors, longest call {longest:?}", committed.len());
        all.extend(committed);
        recovered.extend(first_ok);
    }
    let slowest = recovered.iter().map(|t| t.saturating_duration_since(back)).max().expect("no worker recovered");
    assert!(slowest < Duration::from_secs(2), "service came back {slowest:?} after PostgreSQL");
    let c = common::connect(port, "app", "app", "app").await;
    let n: i64 = c.query_one("select count(*) from kill_t where id = any($1)", &[&all]).await.unwrap().get(0);
    assert_eq!(n as usize, all.len(), "acknowledged commits were lost");
    drop(p);
    drop(cluster);
}

/// A stalled server (SIGSTOP) cannot hold a client beyond query_timeout (+ one grace period) or
/// a new connection beyond server_connect_timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_server_waits_are_bounded() {
    let cluster = Arc::new(tokio::task::spawn_blocking(|| common::PrivateCluster::start(0)).await.unwrap());
    let mut cfg = proxy::config(cluster.primary_port(), &[]);
    cfg.proxy.query_timeout = pgshift::config::Dur::secs(1);
    cfg.proxy.server_connect_timeout = pgshift::config::Dur::secs(1);
    cfg.proxy.server_connect_retry = pgshift::config::Dur::secs(0);
    cfg.proxy.default_pool_size = 2;
    let p = proxy::start(cfg).await;
    let port = proxy::port(&p);
    let a = common::connect(port, "app", "app", "app").await;
    a.batch_execute("select 1").await.unwrap();
    let c2 = cluster.clone();
    tokio::task::spawn_blocking(move || c2.pause_node(0)).await.unwrap();
    let t = Instant::now();
    let err = tokio::time::timeout(Duration::from_secs(15), a.batch_execute("select 1"))
        .await
        .expect("query hung")
        .unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(5), "took {:?}", t.elapsed());
    assert_eq!(err.as_db_error().map(|d| d.code().code()), Some("57014"), "{err}");
    // a second client needs a new server connection: bounded by server_connect_timeout
    let b = common::connect(port, "app", "app", "app").await;
    let holder = common::connect(port, "app", "app", "app").await;
    let _ = tokio::time::timeout(Duration::from_secs(15), holder.batch_execute("select 1")).await.expect("hung");
    let t = Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(15), b.batch_execute("select 1")).await.expect("hung");
    assert!(r.is_err());
    assert!(t.elapsed() < Duration::from_secs(5), "took {:?}", t.elapsed());
    let c2 = cluster.clone();
    tokio::task::spawn_blocking(move || c2.resume_node(0)).await.unwrap();
    let c = common::connect(port, "app", "app", "app").await;
    c.batch_execute("select 1").await.unwrap();
    drop(p);
}

/// A client that vanishes mid-COPY, mid-transaction or mid-result leaves the pool as it found it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vanished_clients_return_the_pool_to_baseline() {
    use futures_util::SinkExt;
    let bed = common::shared_bed();
    let p = proxy::start(proxy::config(bed.primary_port, &[])).await;
    let port = proxy::port(&p);
    let setup = common::connect(port, "app", "app", "app").await;
    setup.batch_execute("drop table if exists rel_copy; create table rel_copy(id int)").await.unwrap();
    for scenario in ["copy", "transaction", "result"] {
        let (client, conn) =
            tokio_postgres::connect(&common::conn_str(port, "app", "app", "app"), tokio_postgres::NoTls).await.unwrap();
        let task = tokio::spawn(conn);
        match scenario {
            "copy" => {
                let sink = client.copy_in("copy rel_copy from stdin").await.unwrap();
                futures_util::pin_mut!(sink);
                sink.send(bytes::Bytes::from_static(b"1\n2\n")).await.unwrap();
                sink.flush().await.unwrap();
            }
            "transaction" => client.batch_execute("begin; insert into rel_copy values (9)").await.unwrap(),
            _ => {
                let q = client.simple_query("select repeat('x', 100) from generate_series(1, 2000000)");
                let _ = tokio::time::timeout(Duration::from_millis(300), q).await;
            }
        }
        task.abort();
        drop(client);
        until(&format!("pool back to baseline after {scenario}"), || pool_active(&p) == (0, 0)).await;
    }
    let n: i64 = setup.query_one("select count(*) from rel_copy", &[]).await.unwrap().get(0);
    assert_eq!(n, 0, "a vanished client's COPY or transaction was committed");
}

/// A client that trickles its login a byte at a time is closed at client_login_timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_is_cut_at_login_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut cfg = proxy::config(common::shared_bed().primary_port, &[]);
    cfg.proxy.client_login_timeout = pgshift::config::Dur::secs(1);
    let p = proxy::start(cfg).await;
    let mut s = tokio::net::TcpStream::connect(p.addr).await.unwrap();
    let started = Instant::now();
    let mut closed = false;
    for b in [0u8, 0, 0, 40, 0, 3, 0, 0, b'u', b's', b'e', b'r'] {
        if s.write_all(&[b]).await.is_err() {
            closed = true;
            break;
        }
        let mut buf = [0u8; 64];
        if let Ok(Ok(0)) = tokio::time::timeout(Duration::from_millis(300), s.read(&mut buf)).await {
            closed = true;
            break;
        }
    }
    assert!(closed, "the slow client was not cut off");
    assert!(started.elapsed() < Duration::from_secs(3));
    until("connection count back to 0", || p.shared.conn_count.get() == 0).await;
}

/// A proxy with one server connection, a client holding it in an open transaction, and a second
/// client: its next query has to wait.
async fn one_server_held() -> (pgshift::proxy::Proxy, tokio_postgres::Client, tokio_postgres::Client) {
    let mut cfg = proxy::config(common::shared_bed().primary_port, &[]);
    cfg.proxy.default_pool_size = 1;
    let p = proxy::start(cfg).await;
    let port = proxy::port(&p);
    let holder = common::connect(port, "app", "app", "app").await;
    holder.batch_execute("begin; select 1").await.unwrap();
    let waiter = common::connect(port, "app", "app", "app").await;
    (p, holder, waiter)
}

/// A cancel from a client waiting for a pooled connection takes it out of the queue at once
/// (PgBouncer #1222).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_leaves_the_wait_queue() {
    let (p, holder, waiter) = one_server_held().await;
    let token = waiter.cancel_token();
    let waiting = tokio::spawn(async move {
        let t = Instant::now();
        let r = waiter.simple_query("select 1").await;
        (r.err().and_then(|e| e.as_db_error().map(|d| d.code().code().to_string())), t.elapsed(), waiter)
    });
    until("a waiter in the queue", || pool_active(&p).1 == 1).await;
    token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    let (code, took, waiter) = waiting.await.unwrap();
    assert_eq!(code.as_deref(), Some("57014"));
    assert!(took < Duration::from_secs(5));
    assert_eq!(pool_active(&p).1, 0, "the cancelled client is still queued");
    holder.batch_execute("commit").await.unwrap();
    waiter.simple_query("select 1").await.expect("the cancelled client can go on");
}

/// A cancel sent while the client runs nothing is dropped, and stays dropped: it does not end
/// the client's next wait for a pooled connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_while_idle_does_not_end_a_later_wait() {
    let (p, holder, waiter) = one_server_held().await;
    waiter.cancel_token().cancel_query(tokio_postgres::NoTls).await.unwrap();
    // The driver returns once the cancel is sent; wait until pgshift has dropped it.
    let dropped = || {
        p.shared
            .pools
            .all()
            .iter()
            .map(|pl| pl.stats.cancels_dropped.load(std::sync::atomic::Ordering::Relaxed))
            .sum::<u64>()
    };
    until("the cancel dropped", || dropped() == 1).await;
    let waiting = tokio::spawn(async move { waiter.simple_query("select 1").await.map(|_| ()) });
    until("a waiter in the queue", || pool_active(&p).1 == 1).await;
    holder.batch_execute("commit").await.unwrap();
    waiting.await.unwrap().expect("the earlier cancel ended the wait");
}

/// Garbage before and after login ends in an ErrorResponse or a closed connection, never a
/// panic or a hang, and the proxy keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_input_is_refused_cleanly() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let p = proxy::primary_only().await;
    let mut seed = 0x9e3779b97f4a7c15u64;
    let mut rnd = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for case in 0..150 {
        let after_login = case % 2 == 0;
        let mut s = if after_login {
            common::raw::login(proxy::port(&p), "app", "app", "app").await
        } else {
            tokio::net::TcpStream::connect(p.addr).await.unwrap()
        };
        let len = (rnd() % 300) as usize;
        let mut junk: Vec<u8> = (0..len).map(|_| rnd() as u8).collect();
        match case % 5 {
            0 => junk.splice(0..0, [b'Q', 0, 0, 0, 2]).for_each(drop), // length under 4
            1 => junk.splice(0..0, [b'P', 0x7f, 0xff, 0xff, 0xff]).for_each(drop), // 2 GiB
            2 => junk.splice(0..0, [b'!', 0, 0, 0, 9, 1, 2]).for_each(drop), // unknown tag, truncated
            3 => junk.splice(0..0, [0, 0, 0, 30, 0, 3, 0, 0, b'u', b's']).for_each(drop), // params unterminated
            _ => {}
        }
        let _ = s.write_all(&junk).await;
        let _ = s.shutdown().await;
        let mut out = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
        assert!(read.is_ok(), "case {case}: the proxy neither answered nor closed");
    }
    let c = common::connect(proxy::port(&p), "app", "app", "app").await;
    assert_eq!(c.query_one("select 1", &[]).await.unwrap().get::<_, i32>(0), 1);
}
