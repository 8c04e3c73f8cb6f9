//! The admin port under abuse: a flood of /ready costs PostgreSQL one login per interval.
//!
//! HTTP requests are written by hand (as in tests/admin.rs), so headers are exactly what is sent.

mod common;

use common::proxy;
use pgshift::proxy::Proxy;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One request with the given extra header lines (each ending in `\r\n`); returns (status, body).
async fn request(addr: &str, method: &str, path: &str, headers: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect to the admin port");
    let req = format!("{method} {path} HTTP/1.1\r\n{headers}Content-Length: 0\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("not an HTTP response: {text:?}"));
    let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).expect("a status code");
    (status, body.to_string())
}

fn admin(p: &Proxy) -> String {
    p.admin_addr.clone().expect("the test config enables the admin port")
}

/// PostgreSQL's count of sessions ever opened to database `app`, once no `app` backend is left
/// (a backend adds its session to the statistics as it exits).
fn app_sessions(port: u16) -> i64 {
    for _ in 0..100 {
        let left = common::superuser_exec(port, "SELECT count(*) FROM pg_stat_activity WHERE datname = 'app'");
        if left == "0" {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let n = common::superuser_exec(port, "SELECT sessions FROM pg_stat_database WHERE datname = 'app'");
    n.parse().unwrap_or_else(|_| panic!("sessions: {n:?}"))
}

async fn ready_burst(addr: &str, n: usize) {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let addr = addr.to_string();
            tokio::spawn(async move { request(&addr, "GET", "/ready", "Host: localhost\r\n").await })
        })
        .collect();
    for t in tasks {
        let (status, body) = t.await.unwrap();
        assert_eq!(status, 200, "every /ready is answered, and correctly: {body}");
        assert!(body.starts_with("ready: primary answered"), "{body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flood_of_ready_requests_costs_one_login_per_interval() {
    // A cluster of its own: nothing else logs in to its `app` database meanwhile.
    let cluster = tokio::task::block_in_place(|| common::PrivateCluster::start(0));
    let pg = cluster.primary_port();
    let mut config = proxy::config(pg, &[]);
    config.admin.ready_probe_interval = pgshift::config::Dur::secs(1);
    let p = proxy::start(config).await;
    let addr = admin(&p);
    let before = tokio::task::block_in_place(|| app_sessions(pg));

    let started = Instant::now();
    ready_burst(&addr, 200).await;
    for _ in 0..3 {
        ready_burst(&addr, 50).await;
    }
    let elapsed = started.elapsed();
    let after = tokio::task::block_in_place(|| app_sessions(pg));

    // One probe, then at most one per elapsed interval (1s): a bound that holds on a slow
    // machine too, while the old one-login-per-request code opened 350.
    let logins = after - before;
    let bound = 2 + elapsed.as_secs() as i64;
    assert!(logins >= 1, "the probe really asks PostgreSQL ({before} -> {after})");
    assert!(logins <= bound, "{logins} logins for 350 /ready requests in {elapsed:?} (at most {bound})");
}
