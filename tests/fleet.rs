//! Fleet: several pgshift instances in front of the shared bed; a CancelRequest that lands on an
//! instance other than the client's reaches the client's query (directly and through HAProxy).
//!
//! Queries sleep 60 s and every test is bounded well below that: a query that ends before then
//! was cancelled. Nothing here measures time.

mod common;

use common::{haproxy, proxy, raw};
use pgshift::config::{FleetConfig, FleetPeer};
use pgshift::proxy::Proxy;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Bound on each test: well below the queries' 60 s sleep.
const BOUND: Duration = Duration::from_secs(40);

/// The client pid floor (2^22): pgshift's client pids are above it.
const PID_FLOOR: i32 = 1 << 22;

/// A proxy config on `port` in front of the bed's primary, with fleet id `id` and `peers`.
fn fleet_config(port: u16, id: u16, peers: &[(u16, u16)]) -> pgshift::config::Config {
    let mut cfg = proxy::config(common::shared_bed().primary_port, &[]);
    cfg.proxy.listen = format!("127.0.0.1:{port}");
    let peers = peers.iter().map(|&(id, p)| FleetPeer { id, address: format!("127.0.0.1:{p}") }).collect();
    cfg.fleet = FleetConfig { id, peers, store: common::FLEET_STORE.into(), ..Default::default() };
    cfg
}

/// Three instances, ids 1, 2, 3, each listing the other two.
async fn three() -> Vec<Proxy> {
    let ports: Vec<u16> = (0..3).map(|_| common::free_port()).collect();
    let mut out = Vec::new();
    for (i, &port) in ports.iter().enumerate() {
        let peers: Vec<(u16, u16)> =
            ports.iter().enumerate().filter(|(j, _)| *j != i).map(|(j, &p)| (j as u16 + 1, p)).collect();
        out.push(proxy::start(fleet_config(port, i as u16 + 1, &peers)).await);
    }
    out
}

/// A raw client logged in through `port`, with its BackendKeyData (pid, secret).
async fn client(port: u16) -> (TcpStream, i32, i32) {
    let (s, frames) = raw::login_with(port, "app", "app", "app", &[]).await.expect("login");
    let (_, k) = frames.iter().find(|(t, _)| *t == b'K').expect("BackendKeyData");
    let pid = i32::from_be_bytes([k[0], k[1], k[2], k[3]]);
    let secret = i32::from_be_bytes([k[4], k[5], k[6], k[7]]);
    (s, pid, secret)
}

/// Sends `sql` and waits until PostgreSQL shows it running (its text is unique per test).
async fn start_query(s: &mut TcpStream, sql: &str) {
    let mut out = Vec::new();
    raw::query(&mut out, sql);
    raw::send(s, &out).await;
    wait_running(sql).await;
}

/// Waits until a backend runs `sql`.
async fn wait_running(sql: &str) {
    let q = format!(
        "select count(*) from pg_stat_activity where state = 'active' and query = '{}'",
        sql.replace('\'', "''")
    );
    while common::superuser_exec(common::shared_bed().primary_port, &q) != "1" {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends a CancelRequest to `port` and waits until pgshift closes the connection (it has then
/// handled the request, forward included).
async fn send_cancel(port: u16, pid: i32, secret: i32) {
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).await.expect("connect for cancel");
    let mut pkt = Vec::with_capacity(16);
    for v in [16, 80_877_102, pid, secret] {
        pkt.extend_from_slice(&v.to_be_bytes());
    }
    tcp.write_all(&pkt).await.unwrap();
    let mut sink = [0u8; 64];
    while tcp.read(&mut sink).await.unwrap_or(0) > 0 {}
}

/// The SQLSTATE the query's reply ended with (`None`: it completed).
async fn outcome(s: &mut TcpStream) -> Option<String> {
    let frames = raw::read_frames(s, b'Z').await;
    let (_, e) = frames.iter().find(|(t, _)| *t == b'E')?;
    raw::error_fields(e).into_iter().find(|(c, _)| *c == b'C').map(|(_, v)| v)
}

fn forwards(p: &Proxy) -> (u64, u64, u64) {
    let c = &p.shared.cancel_forwards;
    (c.sent.load(Ordering::Relaxed), c.failed.load(Ordering::Relaxed), c.unknown_peer.load(Ordering::Relaxed))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_sent_to_another_instance_stops_the_query() {
    let fleet = three().await;
    tokio::time::timeout(BOUND, async {
        for (other, name) in [(1, "b"), (2, "c")] {
            let (mut s, pid, secret) = client(proxy::port(&fleet[0])).await;
            assert!(pid > PID_FLOOR, "{pid}");
            assert_eq!(pid & 0x3fff, 1, "the key names instance 1");
            let sql = format!("select pg_sleep(60) /* fleet direct {name} */");
            start_query(&mut s, &sql).await;
            send_cancel(proxy::port(&fleet[other]), pid, secret).await;
            assert_eq!(outcome(&mut s).await.as_deref(), Some("57014"), "cancel through instance {name}");
            assert_eq!(forwards(&fleet[other]), (1, 0, 0), "instance {name} forwarded it once");
            // The session goes on.
            let mut out = Vec::new();
            raw::query(&mut out, "select 1");
            raw::send(&mut s, &out).await;
            assert_eq!(outcome(&mut s).await, None);
        }
    })
    .await
    .expect("the queries were cancelled");
    assert_eq!(forwards(&fleet[0]), (0, 0, 0), "the owner forwards nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_fleet_a_foreign_key_is_dropped() {
    let (pa, pb) = (common::free_port(), common::free_port());
    let a = proxy::start(fleet_config(pa, 1, &[(2, pb)])).await;
    let mut plain = proxy::config(common::shared_bed().primary_port, &[]);
    plain.proxy.listen = format!("127.0.0.1:{pb}");
    let b = proxy::start(plain).await;
    tokio::time::timeout(BOUND, async {
        let (mut s, pid, secret) = client(pa).await;
        let sql = "select pg_sleep(60) /* fleet off drops */";
        start_query(&mut s, sql).await;
        send_cancel(pb, pid, secret).await;
        // B has handled the request and closed: had it forwarded, the query would be gone.
        wait_running(sql).await;
        assert_eq!(forwards(&b), (0, 0, 0));
        assert!(!pgshift::admin::metrics::render(&b.shared).unwrap().contains("pgshift_cancel_forwarded"));
        send_cancel(pa, pid, secret).await;
        assert_eq!(outcome(&mut s).await.as_deref(), Some("57014"));
    })
    .await
    .expect("the query was cancelled through its own instance");
    drop(a);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_configured_peers_are_contacted_and_only_once() {
    // Peer 2 is a listener of the test's: it records what pgshift sends it.
    let trap = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let trap_port = trap.local_addr().unwrap().port();
    let port = common::free_port();
    let p = proxy::start(fleet_config(port, 1, &[(2, trap_port)])).await;
    tokio::time::timeout(BOUND, async {
        // A forged key naming fleet id 5, which is not configured: nothing is contacted.
        send_cancel(port, (300 << 14) | 5, 42).await;
        assert_eq!(forwards(&p), (0, 0, 1));
        // A forged key naming peer 2: forwarded there once, marked as forwarded.
        let got = tokio::spawn(async move {
            let (mut s, _) = trap.accept().await.unwrap();
            let mut pkt = [0u8; 16];
            s.read_exact(&mut pkt).await.unwrap();
            (pkt, trap) // kept: a second connection would still queue on it
        });
        let pid = (300 << 14) | 2;
        send_cancel(port, pid, 42).await;
        let (pkt, trap) = got.await.unwrap();
        let mut want = Vec::new();
        for v in [16, 80_877_102, pid | i32::MIN, 42] {
            want.extend_from_slice(&v.to_be_bytes());
        }
        assert_eq!(pkt.to_vec(), want, "the same request, with the forwarded mark");
        assert_eq!(forwards(&p), (1, 0, 1));
        // A request already marked as forwarded is never forwarded again.
        send_cancel(port, pid | i32::MIN, 42).await;
        assert_eq!(forwards(&p), (1, 0, 1));
        // The unknown-id request came before the trap was accepting; nothing else is queued on it.
        let std_trap = trap.into_std().unwrap();
        std_trap.set_nonblocking(true).unwrap();
        assert!(std_trap.accept().is_err(), "no other connection reached the trap");
        let metrics = pgshift::admin::metrics::render(&p.shared).unwrap();
        assert!(metrics.contains("pgshift_cancel_forwarded_total{outcome=\"unknown_peer\"} 1"), "{metrics}");
    })
    .await
    .expect("cancel requests were handled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_haproxy_every_cancel_lands() {
    let fleet = three().await;
    let backends: Vec<_> = fleet.iter().map(haproxy::backend).collect();
    let Some(ha) = haproxy::HaProxy::start(&backends).await else { return };
    const N: usize = 4;
    tokio::time::timeout(BOUND, async {
        let mut clients = Vec::new();
        for i in 0..N {
            let c = common::connect(ha.port, "app", "app", "app").await;
            let token = c.cancel_token();
            let sql = format!("select pg_sleep(60) /* fleet haproxy {i} */");
            let q = tokio::spawn(async move { c.simple_query(&sql).await.map(|_| ()).map_err(|e| e.code().cloned()) });
            clients.push((q, token, i));
        }
        for (_, _, i) in &clients {
            wait_running(&format!("select pg_sleep(60) /* fleet haproxy {i} */")).await;
        }
        for (q, token, i) in clients {
            token.cancel_query(tokio_postgres::NoTls).await.unwrap();
            let got = q.await.unwrap();
            assert_eq!(got, Err(Some(tokio_postgres::error::SqlState::QUERY_CANCELED)), "client {i}");
        }
    })
    .await
    .expect("every query was cancelled");
    let totals = fleet.iter().map(forwards).fold((0, 0, 0), |a, f| (a.0 + f.0, a.1 + f.1, a.2 + f.2));
    println!("through HAProxy: {N} cancels, {} forwarded to another instance, {} failed", totals.0, totals.1);
    assert_eq!((totals.1, totals.2), (0, 0), "no forward failed or named an unknown instance");
    drop(ha);
}
