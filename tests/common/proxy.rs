//! Starting pgshift in-process for a test, in front of the shared bed or a private cluster.

use pgshift::config::Config;
use pgshift::proxy::Proxy;

/// A config for a proxy on a free port in front of `primary` (and `replicas`), user app/app,
/// admin port on a free port too.
pub fn config(primary: u16, replicas: &[u16]) -> Config {
    let mut text = format!(
        "[proxy]\nlisten = \"127.0.0.1:0\"\ndefault_pool_size = 5\nquery_wait_timeout = \"30s\"\n\
         [auth]\n[[auth.users]]\nname = \"app\"\npassword = \"app\"\n\
         [primary]\nhost = \"127.0.0.1\"\nport = {primary}\n\
         [admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"test-token\"\nadmin_users = [\"app\"]\n"
    );
    for r in replicas {
        text.push_str(&format!("[[replicas]]\nhost = \"127.0.0.1\"\nport = {r}\n"));
    }
    Config::from_toml(&text).expect("test config is valid")
}

/// Starts a proxy from a config (and routes its logs to the test's captured output).
pub async fn start(config: Config) -> Proxy {
    let filter = std::env::var("PGSHIFT_LOG").unwrap_or_else(|_| "pgshift=info".into());
    let _ = tracing_subscriber::fmt().with_test_writer().with_env_filter(filter).try_init();
    Proxy::start(config, None).await.expect("proxy starts")
}

/// A proxy in front of the shared bed's primary only (no replicas), pool size 5.
pub async fn primary_only() -> Proxy {
    start(config(super::shared_bed().primary_port, &[])).await
}

/// A proxy in front of the shared bed's primary with a pool of `size` connections, so clients
/// really share servers (1: each runs on the server the previous one used).
pub async fn with_pool(size: usize) -> Proxy {
    let mut cfg = config(super::shared_bed().primary_port, &[]);
    cfg.proxy.default_pool_size = size;
    start(cfg).await
}

/// A proxy in front of a fake server (tests/common/fake_pg.rs) on `port`: one server connection
/// per pool (so the next client reuses the previous one's), no role discovery, everything to the
/// primary, no admin port.
pub async fn in_front_of_fake(port: u16) -> Proxy {
    let mut cfg = config(port, &[]);
    cfg.proxy.default_pool_size = 1;
    cfg.routing.role_discovery = false;
    cfg.routing.read_write_split = false;
    cfg.admin.listen = String::new();
    let p = start(cfg).await;
    wait_healthy(&p).await;
    p
}

/// The proxy's client port.
pub fn port(p: &Proxy) -> u16 {
    p.addr.port()
}

/// Waits until every backend has been probed up (reads go to replicas only after that).
pub async fn wait_healthy(p: &Proxy) {
    use pgshift::pool::cluster::TopologyState;
    use std::sync::atomic::Ordering;
    for _ in 0..200 {
        let rt = p.shared.runtime.load();
        let all = std::iter::once(&rt.primary).chain(rt.replicas.iter());
        let discovering = rt.clusters.iter().any(|c| c.failovers.state() == TopologyState::Discovering);
        if all.clone().all(|b| b.health.up.load(Ordering::Relaxed)) && !discovering {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("backends not healthy after 10s");
}

/// One HTTP/1.1 request to the admin port with an optional bearer token and body; (status, body).
/// Written by hand (test code only; the product uses axum), chunked answers decoded.
pub async fn admin_http(p: &Proxy, method: &str, path: &str, token: Option<&str>, body: &str) -> (u16, String) {
    let addr = p.admin_addr.clone().expect("the test config enables the admin port");
    admin_http_at(&addr, method, path, token, body).await
}

/// The same toward an admin port by address (a pgshift process of the test's).
pub async fn admin_http_at(addr: &str, method: &str, path: &str, token: Option<&str>, body: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect to the admin port");
    let mut auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    if body.starts_with('{') {
        auth.push_str("Content-Type: application/json\r\n");
    }
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, rest) = text.split_once("\r\n\r\n").expect("an HTTP response");
    let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).expect("a status code");
    let body =
        if head.to_ascii_lowercase().contains("transfer-encoding: chunked") { dechunk(rest) } else { rest.into() };
    (status, body)
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        body = &rest[n + 2..];
    }
    out
}
