//! The admin port and the PgBouncer-style console against a real PostgreSQL: counters, readiness,
//! pause/resume, reconnect, kill, reload, auth, Prometheus parsing, and psql on the console.
//!
//! HTTP requests are written by hand here (test code only; the product uses axum), so the tests
//! need no HTTP client dependency.

mod common;

use common::proxy;
use pgshift::proxy::Proxy;
use serde_json::Value;
use std::process::Command;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

const TOKEN: &str = "test-token";

/// One HTTP/1.1 request to the admin port; returns (status, body).
async fn http(p: &Proxy, method: &str, path: &str, token: Option<&str>) -> (u16, String) {
    proxy::admin_http(p, method, path, token, "").await
}

async fn json(p: &Proxy, path: &str) -> Value {
    let (status, body) = http(p, "GET", path, None).await;
    assert_eq!(status, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path} is not JSON ({e}): {body}"))
}

async fn post(p: &Proxy, path: &str) -> Value {
    let (status, body) = http(p, "POST", path, Some(TOKEN)).await;
    assert_eq!(status, 200, "POST {path}: {body}");
    serde_json::from_str(&body).unwrap()
}

/// The (database app, user app) pool group of /stats.
fn app_pool(stats: &Value) -> &Value {
    let pools = stats["pools"].as_array().expect("pools");
    pools
        .iter()
        .find(|g| g["database"] == "app" && g["user"] == "app")
        .unwrap_or_else(|| panic!("no app pool: {stats}"))
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"))
}

/// psql with headers (unaligned, `|`-separated), so column names can be checked.
fn psql_console(port: u16, user: &str, sql: &str) -> std::process::Output {
    Command::new("psql")
        .args(["-X", "-A", "-h", "127.0.0.1", "-p", &port.to_string(), "-U", user, "-d", "pgbouncer", "-c", sql])
        .env("PGPASSWORD", "app")
        .env("PGCONNECT_TIMEOUT", "10")
        .output()
        .expect("cannot run psql (scripts/test.sh installs PostgreSQL)")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_move_as_queries_run() {
    let p = proxy::primary_only().await;
    let before = json(&p, "/stats").await;
    let c = common::connect(proxy::port(&p), "app", "app", "app").await;
    // The client sees the error before the ReadyForQuery that ends its transaction, so the next
    // query may ride on the same lease: 22 requests, at least 21 transactions.
    let _ = c.simple_query("select 1/0").await.unwrap_err();
    for i in 0..20 {
        c.simple_query(&format!("select {i}")).await.unwrap();
    }
    c.batch_execute("begin; select 1; commit").await.unwrap();
    let after = json(&p, "/stats").await;

    let t0 = &before["totals"];
    let t1 = &after["totals"];
    assert!(u(&t1["xacts"]) >= u(&t0["xacts"]) + 21, "transactions: {t0} -> {t1}");
    assert!(u(&t1["queries"]) >= u(&t0["queries"]) + 22, "queries: {t0} -> {t1}");
    assert!(
        u(&t1["bytes_in"]) > u(&t0["bytes_in"]) && u(&t1["bytes_out"]) > u(&t0["bytes_out"]),
        "bytes: {t0} -> {t1}\n{after}"
    );
    assert!(u(&after["latency"]["transaction"]["count"]) >= 21, "{}", after["latency"]);
    assert!(u(&after["latency"]["query"]["select"]["count"]) >= 20, "{}", after["latency"]);
    assert!(after["latency"]["transaction"]["p99"].as_f64().unwrap() > 0.0);
    assert!(u(&after["latency"]["pool_wait"]["count"]) >= 21, "pool waits are recorded: {}", after["latency"]);
    assert_eq!(u(&after["errors"]["22"]), 1, "division by zero is class 22: {}", after["errors"]);
    assert!(u(&after["logins"]) >= 1 && u(&after["clients"]) == 1);
    let pool = app_pool(&after);
    assert_eq!(u(&pool["cl_active"]), 1, "{pool}");
    assert_eq!(pool["backends"][0]["backend"], "primary");
    assert!(u(&pool["sv_idle"]) >= 1, "{pool}");
    let primary = &after["backends"][0];
    assert_eq!(primary["name"], "primary");
    // Counted per lease, like xacts above: the query after the error may ride the same one.
    assert!(u(&primary["routed"]) >= 21, "{primary}");

    let clients = json(&p, "/clients").await;
    assert_eq!(clients.as_array().map(Vec::len), Some(1), "{clients}");
    assert_eq!(clients[0]["user"], "app");
    let servers = json(&p, "/servers").await;
    assert!(servers["pools"].as_array().is_some_and(|a| !a.is_empty()), "{servers}");
    let config = json(&p, "/config").await;
    assert_eq!(config["auth"]["users"][0]["password"], "<redacted>", "{config}");
    assert_eq!(config["admin"]["token"], "<redacted>");

    let (status, body) = http(&p, "GET", "/metrics", None).await;
    assert_eq!(status, 200);
    let line = body.lines().find(|l| l.starts_with("pgshift_pool_transactions_total{")).expect(&body);
    let n: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(n >= 21.0, "{line}");
    assert_eq!(http(&p, "GET", "/health", None).await, (200, "ok\n".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_follows_the_primary() {
    let cluster = tokio::task::block_in_place(|| common::PrivateCluster::start(0));
    let p = proxy::start(proxy::config(cluster.primary_port(), &[])).await;
    proxy::wait_healthy(&p).await; // `/ready` answers 503 until discovery has probed every node
    let (status, body) = http(&p, "GET", "/ready", None).await;
    assert_eq!(status, 200, "{body}");

    tokio::task::block_in_place(|| cluster.stop_node(0));
    // The answer is reused for [admin] ready_probe_interval (1s): the next probe sees the stop.
    let deadline = Instant::now() + Duration::from_secs(20);
    let body = loop {
        let (status, body) = http(&p, "GET", "/ready", None).await;
        if status == 503 {
            break body;
        }
        assert!(Instant::now() < deadline, "still ready after the primary stopped: {body}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert!(body.contains("not ready"), "{body}");
    let (_, metrics) = http(&p, "GET", "/metrics", None).await;
    assert!(metrics.lines().any(|l| l == "pgshift_ready 0.0"), "pgshift_ready follows the probe: {metrics}");
    assert_eq!(http(&p, "GET", "/health", None).await.0, 200, "health does not depend on PostgreSQL");

    tokio::task::block_in_place(|| cluster.start_node(0));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, body) = http(&p, "GET", "/ready", None).await;
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "still not ready after the primary came back: {body}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_holds_new_queries_and_resume_releases_them() {
    let p = proxy::primary_only().await;
    let port = proxy::port(&p);
    let c = common::connect(port, "app", "app", "app").await;
    let in_tx = common::connect(port, "app", "app", "app").await;
    in_tx.batch_execute("begin; select 1").await.unwrap();

    // A running transaction keeps its server: PAUSE reports it could not drain in time.
    let r = post(&p, "/pause?timeout=300ms").await;
    assert_eq!((r["paused"].as_bool(), r["drained"].as_bool()), (Some(true), Some(false)), "{r}");
    assert_eq!(u(&r["sv_active"]), 1, "{r}");
    // ...and may finish while paused.
    in_tx.batch_execute("select 2; commit").await.unwrap();
    let r = post(&p, "/pause?timeout=5s").await;
    assert_eq!(r["drained"].as_bool(), Some(true), "{r}");
    assert_eq!(json(&p, "/stats").await["paused"], true);

    let held = tokio::spawn(async move { c.simple_query("select 42").await.map(|_| c) });
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(!held.is_finished(), "a new transaction must wait while paused");
    let r = post(&p, "/resume").await;
    assert_eq!(r["was_paused"].as_bool(), Some(true), "{r}");
    let c = tokio::time::timeout(Duration::from_secs(10), held).await.expect("resumed").unwrap().expect("no error");
    c.simple_query("select 1").await.unwrap();
    assert_eq!(json(&p, "/stats").await["paused"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_replaces_server_connections_and_kill_closes_a_client() {
    let p = proxy::primary_only().await;
    let c = common::connect(proxy::port(&p), "app", "app", "app").await;
    let pid = |rows: Vec<tokio_postgres::Row>| rows[0].get::<_, i32>(0);
    c.batch_execute("begin").await.unwrap();
    let leased = pid(c.query("select pg_backend_pid()", &[]).await.unwrap());
    let r = post(&p, "/reconnect").await;
    assert_eq!(u(&r["reconnect_epoch"]), 1, "{r}");
    // Still the same server inside the transaction; a new one after it is checked in.
    assert_eq!(pid(c.query("select pg_backend_pid()", &[]).await.unwrap()), leased);
    c.batch_execute("commit").await.unwrap();
    let next = pid(c.query("select pg_backend_pid()", &[]).await.unwrap());
    assert_ne!(next, leased, "the connection opened before RECONNECT was closed at check-in");

    let id = u(&json(&p, "/clients").await[0]["id"]);
    assert_eq!(http(&p, "POST", "/kill_client?id=999999", Some(TOKEN)).await.0, 404);
    let r = post(&p, &format!("/kill_client?id={id}")).await;
    assert_eq!(u(&r["killed"]), id);
    let err = tokio::time::timeout(Duration::from_secs(5), c.simple_query("select 1")).await.expect("no hang");
    assert!(err.is_err(), "a killed client's connection is closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutating_endpoints_need_the_token_and_reload_keeps_a_good_config() {
    let bed = common::shared_bed();
    let dir = std::env::temp_dir().join(format!("pgshift-admin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("proxy.toml");
    let text = |pool: usize| {
        format!(
            "[proxy]\nlisten = \"127.0.0.1:0\"\ndefault_pool_size = {pool}\n[auth]\n[[auth.users]]\nname = \"app\"\n\
             password = \"app\"\n[primary]\nhost = \"127.0.0.1\"\nport = {}\n[admin]\nlisten = \"127.0.0.1:0\"\n\
             token = \"{TOKEN}\"\n",
            bed.primary_port
        )
    };
    std::fs::write(&path, text(5)).unwrap();
    let config = pgshift::config::Config::load(&path).unwrap();
    let p = Proxy::start(config, Some(path.clone())).await.expect("proxy starts");

    for ep in ["/pause", "/resume", "/reload", "/reconnect", "/kill_client?id=1", "/backup"] {
        assert_eq!(http(&p, "POST", ep, None).await.0, 401, "POST {ep} without a token");
        assert_eq!(http(&p, "POST", ep, Some("wrong")).await.0, 401, "POST {ep} with a wrong token");
    }
    assert_eq!(json(&p, "/stats").await["paused"], false, "refused requests changed nothing");

    std::fs::write(&path, text(7)).unwrap();
    assert_eq!(post(&p, "/reload").await["reloaded"], true);
    assert_eq!(json(&p, "/config").await["proxy"]["default_pool_size"], 7);
    std::fs::write(&path, "[proxy]\ndefault_pool_size = \"many\"\n").unwrap();
    let (status, body) = http(&p, "POST", "/reload", Some(TOKEN)).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("default_pool_size"), "the problem is named: {body}");
    assert_eq!(json(&p, "/config").await["proxy"]["default_pool_size"], 7, "the old config stays");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_console_speaks_pgbouncer() {
    let p = proxy::primary_only().await;
    let port = proxy::port(&p);
    let c = common::connect(port, "app", "app", "app").await;
    c.simple_query("select 1").await.unwrap();
    let run = |sql: &'static str| tokio::task::block_in_place(|| psql_console(port, "app", sql));

    let out = run("SHOW POOLS");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let header = stdout.lines().next().unwrap_or_default();
    assert_eq!(
        header,
        "database|user|cl_active|cl_waiting|cl_active_cancel_req|cl_waiting_cancel_req|sv_active|sv_active_cancel|\
         sv_being_canceled|sv_idle|sv_used|sv_tested|sv_login|maxwait|maxwait_us|pool_mode|load_balance_hosts|\
         session_resets|cancel_holds|cancels_dropped"
    );
    assert!(stdout.lines().any(|l| l.starts_with("app|app|1|0|")), "{stdout}");

    let out = run("show stats;");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with("database|total_server_assignment_count|total_xact_count|total_query_count|total_received|total_sent|total_xact_time|total_query_time|total_wait_time|"), "{stdout}");
    for cmd in [
        "SHOW CLIENTS",
        "SHOW SERVERS",
        "SHOW DATABASES",
        "SHOW CONFIG",
        "SHOW LISTS",
        "SHOW STATS_TOTALS",
        "SHOW USERS",
    ] {
        let out = tokio::task::block_in_place(|| psql_console(port, "app", cmd));
        assert!(out.status.success(), "{cmd}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let out = run("SHOW VERSION");
    assert!(String::from_utf8_lossy(&out.stdout).contains("pgshift"));
    let out = run("SHOW HELP");
    assert!(String::from_utf8_lossy(&out.stderr).contains("SHOW HELP|CONFIG|DATABASES"), "{out:?}");

    let out = run("PAUSE");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(json(&p, "/stats").await["paused"], true);
    assert!(String::from_utf8_lossy(&run("PAUSE").stderr).contains("already suspended/paused"));
    assert!(run("RESUME").status.success());
    assert_eq!(json(&p, "/stats").await["paused"], false);
    assert!(run("RECONNECT").status.success());
    let out = run("RELOAD");
    assert!(String::from_utf8_lossy(&out.stderr).contains("no config file"), "{out:?}");

    let out = run("DROP TABLE x");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid command"), "{out:?}");
    let stats = json(&p, "/stats").await;
    assert!(
        stats["pools"].as_array().unwrap().iter().all(|g| g["database"] != "pgbouncer"),
        "no pool for the console: {stats}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_refuses_a_user_not_in_admin_users() {
    let mut config = proxy::config(common::shared_bed().primary_port, &[]);
    config.admin.admin_users = vec!["someone_else".into()];
    let p = proxy::start(config).await;
    let out = tokio::task::block_in_place(|| psql_console(proxy::port(&p), "app", "SHOW POOLS"));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not allowed"), "{stderr}");
    assert_eq!(u(&json(&p, "/stats").await["login_failures"]), 1);
}

/// Parses /metrics with the Prometheus project's own Python parsers (OpenMetrics, strict, and the
/// classic text format), then checks the histograms and quantile gauges are there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_with_the_prometheus_parser() {
    let has_parser = Command::new("python3").args(["-c", "import prometheus_client"]).output();
    if !has_parser.is_ok_and(|o| o.status.success()) {
        eprintln!(
            "SKIPPED: Python's prometheus_client is not installed (scripts/test.sh installs it: \
             python3 -m pip install prometheus_client)"
        );
        return;
    }
    let p = proxy::primary_only().await;
    let c = common::connect(proxy::port(&p), "app", "app", "app").await;
    for _ in 0..10 {
        c.simple_query("select 1").await.unwrap();
    }
    c.batch_execute("create temp table m(x int); insert into m values (1); update m set x = 2; delete from m")
        .await
        .unwrap();
    let (status, body) = http(&p, "GET", "/metrics", None).await;
    assert_eq!(status, 200);
    let script = r#"
import sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics
from prometheus_client.parser import text_string_to_metric_families as classic
text = sys.stdin.read()
list(classic(text))
for f in openmetrics(text):
    for s in f.samples:
        labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
        print(f.type, s.name, labels, s.value)
"#;
    let mut child = Command::new("python3")
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(body.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let parsed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the Prometheus parser rejected /metrics: {}\n{body}",
        String::from_utf8_lossy(&out.stderr)
    );
    let has = |prefix: &str| parsed.lines().any(|l| l.starts_with(prefix));
    assert!(has("histogram pgshift_transaction_latency_seconds_bucket le=+Inf"), "{parsed}");
    assert!(has("histogram pgshift_query_latency_seconds_bucket kind=select,le=0.0005 "), "{parsed}");
    assert!(has("histogram pgshift_pool_wait_seconds_count "), "{parsed}");
    assert!(has("gauge pgshift_transaction_latency_seconds_quantile quantile=0.99 "), "{parsed}");
    assert!(has("gauge pgshift_query_latency_seconds_quantile kind=update,quantile=0.95 "), "{parsed}");
    assert!(has("counter pgshift_pool_transactions_total backend=primary,database=app,user=app "), "{parsed}");
    assert!(has("gauge pgshift_pool_cl_active database=app,user=app 1.0"), "{parsed}");
    assert!(has("gauge pgshift_backend_up backend=primary,role=primary 1.0"), "{parsed}");
    // The last batch made a temp table, which pins the session: its transaction is not over yet.
    let count = parsed.lines().find(|l| l.starts_with("histogram pgshift_transaction_latency_seconds_count")).unwrap();
    assert!(count.rsplit(' ').next().unwrap().parse::<f64>().unwrap() >= 10.0, "{count}");
}

/// The console refuses the extended protocol as PgBouncer does, and closes when the proxy stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_refuses_extended_protocol_and_closes_on_stop() {
    use common::raw;
    let p = proxy::primary_only().await;
    let port = proxy::port(&p);
    let mut s = raw::login(port, "app", "app", "pgbouncer").await;
    let mut out = Vec::new();
    raw::query(&mut out, "SHOW STATE");
    s.write_all(&out).await.unwrap();
    let tags = raw::read_tags(&mut s, b'Z').await;
    assert_eq!(tags, b"TDDDCZ", "RowDescription, 3 rows, CommandComplete, ReadyForQuery");
    let mut out = Vec::new();
    raw::parse(&mut out, "", "SHOW POOLS");
    s.write_all(&out).await.unwrap();
    let frames = raw::read_frames(&mut s, b'E').await;
    let err = String::from_utf8_lossy(&frames.last().unwrap().1).into_owned();
    assert!(err.contains("08P01") && err.contains("extended query protocol"), "{err}");

    let mut idle = raw::login(port, "app", "app", "pgbouncer").await;
    p.stop().await;
    let frames = tokio::time::timeout(Duration::from_secs(5), raw::read_frames(&mut idle, b'E')).await.expect("closed");
    let err = String::from_utf8_lossy(&frames.last().unwrap().1).into_owned();
    assert!(err.contains("57P01"), "{err}");
}
