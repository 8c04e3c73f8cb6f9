//! The admin port under abuse: a flood of /ready costs PostgreSQL one login per interval; slow,
//! idle and surplus connections are closed, and an admin flood never starves the client port;
//! control requests a browser could have sent (Origin, foreign Host) are refused.
//!
//! HTTP requests are written by hand (as in tests/admin.rs), so headers are exactly what is sent.

mod common;

use common::proxy;
use pgshift::config::Dur;
use pgshift::proxy::Proxy;
use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
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

/// Like [`request`], but `None` when the connection is closed without an HTTP answer.
async fn try_request(addr: &str, path: &str) -> Option<u16> {
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.ok()?;
    String::from_utf8_lossy(&raw).split_whitespace().nth(1)?.parse().ok()
}

/// Waits (with a generous bound against hangs, not a timing check) until the server closes `s`.
async fn closed_eventually(s: &mut tokio::net::TcpStream, what: &str) {
    let mut sink = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut sink)).await;
    assert!(r.is_ok(), "{what}: still open after 30s");
}

fn admin(p: &Proxy) -> String {
    p.admin_addr.clone().expect("the test config enables the admin port")
}

async fn paused(p: &Proxy) -> bool {
    let (status, body) = request(&admin(p), "GET", "/stats", "Host: localhost\r\n").await;
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["paused"].as_bool().expect("paused in /stats")
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
    config.admin.ready_probe_interval = Dur::secs(1);
    config.admin.max_connections = 512;
    config.admin.max_connections_per_ip = 512; // the whole burst comes from 127.0.0.1
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

/// A proxy whose admin port takes control requests without a token (loopback, empty token).
async fn tokenless() -> Proxy {
    let mut config = proxy::config(common::shared_bed().primary_port, &[]);
    config.admin.token = String::new();
    proxy::start(config).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_requests_from_a_browser_are_refused() {
    let p = tokenless().await;
    let addr = admin(&p);
    let port = addr.rsplit(':').next().unwrap().to_string();
    let refused = [
        "Host: localhost\r\nOrigin: http://evil.example\r\n".to_string(),
        "Host: localhost\r\nOrigin: null\r\n".to_string(),
        "Host: evil.example\r\n".to_string(),
        format!("Host: evil.example:{port}\r\n"),
        "Host: localhost\r\nSec-Fetch-Site: cross-site\r\n".to_string(),
    ];
    for headers in &refused {
        for path in ["/pause?timeout=1s", "/reload", "/reconnect", "/migration/phase", "/backup"] {
            let (status, body) = request(&addr, "POST", path, headers).await;
            assert_eq!(status, 403, "POST {path} with {headers:?}: {body}");
            let v: serde_json::Value = serde_json::from_str(&body).expect("a JSON error");
            assert!(v["error"].as_str().is_some_and(|e| e.starts_with("refused: ")), "{body}");
        }
        assert!(!paused(&p).await, "a refused request changed nothing ({headers:?})");
    }
    let (status, _) = request(&addr, "GET", "/stats", "Host: localhost\r\nOrigin: http://evil.example\r\n").await;
    assert_eq!(status, 200, "reading stays open");

    // What curl sends from this host still works without a token.
    for host in [format!("127.0.0.1:{port}"), "localhost".into(), format!("[::1]:{port}")] {
        let (status, body) = request(&addr, "POST", "/pause?timeout=1s", &format!("Host: {host}\r\n")).await;
        assert_eq!(status, 200, "POST /pause with Host {host}: {body}");
        assert!(paused(&p).await);
        let (status, body) = request(&addr, "POST", "/resume", &format!("Host: {host}\r\n")).await;
        assert_eq!(status, 200, "POST /resume with Host {host}: {body}");
        assert!(!paused(&p).await);
    }
    let (status, body) = request(&addr, "POST", "/reconnect", "").await;
    assert_eq!(status, 200, "HTTP/1.1 without Host is not a browser: {body}");
}

/// A page whose DNS name was rebound to 127.0.0.1 sends its own name as `Host`: on a loopback
/// listener it reads nothing, with or without a token; the probes still answer any `Host`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_through_a_rebound_host_name_are_refused() {
    let with_token = proxy::start(proxy::config(common::shared_bed().primary_port, &[])).await;
    for p in [tokenless().await, with_token] {
        proxy::wait_healthy(&p).await; // `/ready` answers 503 until discovery has probed every node
        let addr = admin(&p);
        let port = addr.rsplit(':').next().unwrap().to_string();
        for path in ["/clients", "/servers", "/config", "/stats", "/metrics", "/route?sql=select+1", "/migration"] {
            let (status, body) = request(&addr, "GET", path, &format!("Host: evil.example:{port}\r\n")).await;
            assert_eq!(status, 403, "GET {path} with a foreign Host: {body}");
            assert!(body.contains("refused: Host"), "{body}");
            let (status, body) = request(&addr, "HEAD", path, "Host: evil.example\r\n").await;
            assert_eq!(status, 403, "HEAD {path} with a foreign Host: {body}");
        }
        for host in [format!("127.0.0.1:{port}"), "localhost".into(), format!("[::1]:{port}")] {
            let (status, body) = request(&addr, "GET", "/clients", &format!("Host: {host}\r\n")).await;
            assert_eq!(status, 200, "GET /clients with Host {host}: {body}");
        }
        for probe in ["/health", "/ready"] {
            let (status, body) = request(&addr, "GET", probe, "Host: pgshift.internal\r\n").await;
            assert_eq!(status, 200, "GET {probe} answers any Host: {body}");
        }
    }
}

/// `GET /route` needs no token: what it is asked must not fill (and so flush) the classification
/// cache the client sessions rely on, nor grow its memory toward its bound of 8 KiB texts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_questions_leave_the_classification_cache_alone() {
    let p = proxy::start(proxy::config(common::shared_bed().primary_port, &[])).await;
    let addr = admin(&p);
    let before = p.shared.classify_cache.len();
    for i in 0..50 {
        let (status, body) = request(&addr, "GET", &format!("/route?sql=select+{i}+from+t{i}"), "").await;
        assert_eq!(status, 200, "{body}");
    }
    let after = p.shared.classify_cache.len();
    assert_eq!(after, before, "50 distinct /route texts were cached ({before} -> {after})");
}

/// The `pgshift` binary, stopped and reaped when dropped.
struct Child_(Child);

impl Drop for Child_ {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the binary on `config` text, logging to `log`, and waits for `port` to accept.
fn spawn(dir: &Path, text: &str, log: &Path, port: u16, wrap: &[&str]) -> Child_ {
    let path = dir.join("proxy.toml");
    std::fs::write(&path, text).unwrap();
    let (program, args): (&str, Vec<&str>) = match wrap.split_first() {
        Some((first, rest)) => (first, rest.iter().copied().chain([env!("CARGO_BIN_EXE_pgshift")]).collect()),
        None => (env!("CARGO_BIN_EXE_pgshift"), Vec::new()),
    };
    let child = Command::new(program)
        .args(args)
        .args(["--config", path.to_str().unwrap()])
        .env("PGSHIFT_LOG", "pgshift=info")
        .env_remove("PGSHIFT_ADMIN_TOKEN")
        .stderr(std::fs::File::create(log).unwrap())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let child = Child_(child);
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return child;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("pgshift did not start: {}", std::fs::read_to_string(log).unwrap_or_default());
}

fn config_text(port: u16, admin_port: u16, admin_extra: &str) -> String {
    format!(
        "[proxy]\nlisten = \"127.0.0.1:{port}\"\ndefault_pool_size = 5\n[auth]\n[[auth.users]]\nname = \"app\"\n\
         password = \"app\"\n[primary]\nhost = \"127.0.0.1\"\nport = {}\n[admin]\nlisten = \"127.0.0.1:{admin_port}\"\n\
         {admin_extra}",
        common::shared_bed().primary_port
    )
}

fn read_log(log: &Path) -> String {
    let mut text = String::new();
    std::fs::File::open(log).unwrap().read_to_string(&mut text).unwrap();
    text
}

#[test]
fn startup_warns_when_control_needs_no_token() {
    let dir = common::TempDir::new("admin-warn");
    let log = dir.join("pgshift.log");
    let (port, admin_port) = (common::free_port(), common::free_port());
    let child = spawn(&dir, &config_text(port, admin_port, "token = \"\"\n"), &log, admin_port, &[]);
    drop(child);
    let text = read_log(&log);
    let warn = text.lines().find(|l| l.contains("WARN") && l.contains("without a token"));
    let warn = warn.unwrap_or_else(|| panic!("no WARN about the missing token in:\n{text}"));
    assert!(warn.contains("[admin] token") && warn.contains("PGSHIFT_ADMIN_TOKEN"), "{warn}");

    let (port, admin_port) = (common::free_port(), common::free_port());
    let child = spawn(&dir, &config_text(port, admin_port, "token = \"s3cret\"\n"), &log, admin_port, &[]);
    drop(child);
    let text = read_log(&log);
    assert!(!text.contains("without a token"), "no warning once a token is set:\n{text}");
    assert!(!text.contains("s3cret"), "the token is never logged:\n{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_idle_connections_are_closed() {
    let mut config = proxy::config(common::shared_bed().primary_port, &[]);
    config.admin.header_timeout = Dur::secs(1);
    config.admin.idle_timeout = Dur::secs(2);
    let p = proxy::start(config).await;
    let addr = admin(&p);
    let mut slow = Vec::new();
    for i in 0..20 {
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        if i % 2 == 0 {
            s.write_all(b"GET /hea").await.unwrap(); // half a request line, then nothing
        }
        slow.push(s);
    }
    for (i, s) in slow.iter_mut().enumerate() {
        closed_eventually(s, &format!("slowloris connection {i}")).await;
    }
    assert_eq!(try_request(&addr, "/health").await, Some(200), "complete requests are served");

    // A kept-alive connection: served, then closed once idle.
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    s.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n").await.unwrap();
    let mut got = Vec::new();
    while !got.ends_with(b"ok\n") {
        let mut buf = [0u8; 512];
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed before answering: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    assert!(got.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&got));
    closed_eventually(&mut s, "idle kept-alive connection").await;
}

/// A request whose body trickles in (or never comes) held its admin connection for as long as the
/// sender liked: its handler counted as running, which no deadline cuts. The body must arrive
/// within `header_timeout` too; one over the size cap is refused at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_body_that_trickles_in_is_cut_off() {
    let mut config = proxy::config(common::shared_bed().primary_port, &[]);
    config.admin.header_timeout = Dur::secs(1);
    config.admin.token = String::new(); // a loopback listener with no token: POSTs are allowed
    let p = proxy::start(config).await;
    let addr = admin(&p);
    let answer = |head: &'static [u8]| {
        let addr = addr.clone();
        async move {
            let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
            s.write_all(head).await.unwrap();
            let mut got = Vec::new();
            let r = tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut got)).await;
            assert!(r.is_ok(), "the connection is still open after 30s");
            String::from_utf8_lossy(&got).into_owned()
        }
    };
    let slow = answer(
        b"POST /migration/phase HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
          Content-Length: 100\r\n\r\n{\"ph",
    )
    .await;
    assert!(slow.starts_with("HTTP/1.1 408"), "{slow}");
    let big = answer(b"POST /backup HTTP/1.1\r\nHost: localhost\r\nContent-Length: 10000000\r\n\r\n").await;
    assert!(big.starts_with("HTTP/1.1 413"), "{big}");
    assert_eq!(try_request(&addr, "/health").await, Some(200), "complete requests are served");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_max_connections_are_closed_at_once() {
    let mut config = proxy::config(common::shared_bed().primary_port, &[]);
    config.admin.max_connections = 5;
    config.admin.header_timeout = Dur::secs(3600); // only the cap can close anything here
    config.admin.idle_timeout = Dur::secs(3600);
    let p = proxy::start(config).await;
    let addr = admin(&p);
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(tokio::net::TcpStream::connect(&addr).await.unwrap());
    }
    for i in 0..3 {
        let mut extra = tokio::net::TcpStream::connect(&addr).await.unwrap();
        closed_eventually(&mut extra, &format!("connection {} past max_connections = 5", 6 + i)).await;
    }
    // The five in the slots are served.
    let mut first = held.remove(0);
    first.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut raw = Vec::new();
    first.read_to_end(&mut raw).await.unwrap();
    assert!(raw.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&raw));
    drop(held);
    // Their slots come back once the server sees them close.
    let deadline = Instant::now() + Duration::from_secs(20);
    while try_request(&addr, "/health").await != Some(200) {
        assert!(Instant::now() < deadline, "GET /health still refused after the holders left");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A connection to the admin port from `ip` (any 127.0.0.0/8 address is this host's loopback).
async fn connect_from(ip: &str, addr: &str) -> tokio::net::TcpStream {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(format!("{ip}:0").parse().unwrap()).expect("bind a loopback source address");
    sock.connect(addr.parse().unwrap()).await.expect("connect to the admin port")
}

/// One host opens as many connections as it can and holds them: the load balancer's probes from
/// another address are still answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_take_every_connection() {
    let mut config = proxy::config(common::shared_bed().primary_port, &[]);
    config.admin.max_connections = 8;
    config.admin.max_connections_per_ip = 3;
    config.admin.header_timeout = Dur::secs(3600); // only the caps can close anything here
    config.admin.idle_timeout = Dur::secs(3600);
    let p = proxy::start(config).await;
    proxy::wait_healthy(&p).await; // `/ready` answers 503 until discovery has probed every node
    let addr = admin(&p);
    let mut flood = Vec::new();
    for _ in 0..8 {
        flood.push(connect_from("127.0.0.2", &addr).await);
    }
    for probe in ["/health", "/ready"] {
        assert_eq!(
            try_request(&addr, probe).await,
            Some(200),
            "{probe} from another address while one holds all it can"
        );
    }
    for (i, extra) in flood.iter_mut().enumerate().skip(3) {
        closed_eventually(extra, &format!("connection {} from one address past max_connections_per_ip = 3", i + 1))
            .await;
    }
    let first = &mut flood[0];
    first.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut raw = Vec::new();
    first.read_to_end(&mut raw).await.unwrap();
    assert!(
        raw.starts_with(b"HTTP/1.1 200"),
        "the address's first three are served: {}",
        String::from_utf8_lossy(&raw)
    );
}

/// pgshift with 256 file descriptors and no useful admin cap: 300 admin connections must not
/// take the descriptors the client port needs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_flood_does_not_starve_the_client_port() {
    let dir = common::TempDir::new("admin-fds");
    let log = dir.join("pgshift.log");
    let (port, admin_port) = (common::free_port(), common::free_port());
    let extra = "token = \"t\"\nmax_connections = 1000\nmax_connections_per_ip = 1000\nheader_timeout = \"1h\"\nidle_timeout = \"1h\"\n";
    let text = config_text(port, admin_port, extra);
    let child = tokio::task::block_in_place(|| spawn(&dir, &text, &log, admin_port, &["prlimit", "--nofile=256:256"]));
    let mut flood = Vec::new();
    for _ in 0..300 {
        if let Ok(s) = tokio::net::TcpStream::connect(("127.0.0.1", admin_port)).await {
            flood.push(s);
        }
    }
    // Let pgshift take in the flood before the client comes (prlimit execs it: same pid).
    let fds = || std::fs::read_dir(format!("/proc/{}/fd", child.0.id())).map_or(0, |d| d.count());
    let (mut last, mut unchanged) = (0, 0);
    for _ in 0..150 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let n = fds();
        (last, unchanged) = if n == last { (n, unchanged + 1) } else { (n, 0) };
        if unchanged == 5 {
            break;
        }
    }
    assert!(last <= 256 - 32, "pgshift holds {last} descriptors of 256: none kept for clients\n{}", read_log(&log));
    // A bound against a hang (a starved client port never answers the login), not a timing check.
    let c = tokio::time::timeout(Duration::from_secs(30), common::try_connect(port, "app", "app", "app")).await;
    let c = c.unwrap_or_else(|_| panic!("client port hangs while the admin port is flooded\n{}", read_log(&log)));
    let c = c.unwrap_or_else(|e| panic!("client port while the admin port is flooded: {e}\n{}", read_log(&log)));
    let row = c.query_one("select 1", &[]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 1);
    assert!(read_log(&log).contains("open-file limit"), "the refusal is logged:\n{}", read_log(&log));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_unix_socket_listener_serves_and_guards_too() {
    let dir = common::TempDir::new("admin-unix");
    let sock = dir.join("admin.sock");
    let mut config = proxy::config(common::shared_bed().primary_port, &[]);
    config.admin.listen = format!("unix:{}", sock.display());
    config.admin.token = String::new();
    let p = proxy::start(config).await;
    let ask = |req: &'static str| {
        let sock = sock.clone();
        async move {
            let mut s = tokio::net::UnixStream::connect(&sock).await.expect("connect to the admin socket");
            s.write_all(req.as_bytes()).await.unwrap();
            let mut raw = Vec::new();
            s.read_to_end(&mut raw).await.unwrap();
            String::from_utf8_lossy(&raw).into_owned()
        }
    };
    let health = ask("GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await;
    assert!(health.starts_with("HTTP/1.1 200") && health.ends_with("ok\n"), "{health}");
    let evil = "POST /pause HTTP/1.1\r\nHost: localhost\r\nOrigin: http://evil.example\r\nContent-Length: 0\r\n\
                Connection: close\r\n\r\n";
    assert!(ask(evil).await.starts_with("HTTP/1.1 403"));
    let curl = "POST /reconnect HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
    let r = ask(curl).await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    drop(p);
}
