//! The Unix-domain socket (`[proxy] unix_socket_dir`) against real PostgreSQL: libpq (psql) and
//! tokio-postgres log in through `<dir>/.s.PGSQL.<port>` and get the same session as TCP clients
//! (prepared statements, cancels both ways, the console, max_client_conn); an SSLRequest is
//! answered 'N' there even with TLS required on TCP; hba `local` lines apply to it; the socket
//! file gets its mode, replaces a stale file, refuses a live one and is removed at drain and stop.

mod common;

use common::proxy;
use pgshift::config::{Config, TlsMode};
use pgshift::proxy::Proxy;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Output;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A proxy config in front of the shared primary with its Unix socket in `dir`.
fn socket_config(dir: &Path) -> Config {
    let mut c = proxy::config(common::shared_bed().primary_port, &[]);
    c.proxy.unix_socket_dir = dir.display().to_string();
    c
}

/// psql through the socket in `dir` (libpq's `host=<dir>`).
fn psql_unix(dir: &Path, port: u16, user: &str, password: &str, db: &str, sql: &str) -> Output {
    std::process::Command::new("psql")
        .args(["-X", "-v", "ON_ERROR_STOP=1", "-At", "-h", &dir.display().to_string()])
        .args(["-p", &port.to_string(), "-U", user, "-d", db, "-c", sql])
        .env("PGPASSWORD", password)
        .env("PGCONNECT_TIMEOUT", "10")
        .output()
        .expect("cannot run psql")
}

fn ok(out: Output) -> String {
    assert!(out.status.success(), "psql failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// tokio-postgres through the socket in `dir`.
async fn connect_unix(dir: &Path, port: u16, password: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let conn = format!("host={} port={port} user=app password={password} dbname=app connect_timeout=10", dir.display());
    let (client, connection) = tokio_postgres::connect(&conn, tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// Waits until a query with this marker text runs on the primary.
async fn wait_running(marker: &str) {
    let port = common::shared_bed().primary_port;
    let sql = format!(
        "select count(*) from pg_stat_activity where state = 'active' and query like '%{marker}%' \
         and query not like '%pg_stat_activity%'"
    );
    for _ in 0..400 {
        if common::superuser_exec(port, &sql) == "1" {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the query {marker} never started");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libpq_and_tokio_postgres_sessions_over_the_socket() {
    let dir = common::TempDir::new("unix");
    let mut cfg = socket_config(&dir);
    cfg.proxy.unix_socket_mode = "0770".into();
    let p = proxy::start(cfg).await;
    let port = proxy::port(&p);
    let path = dir.join(format!(".s.PGSQL.{port}"));
    assert_eq!(p.unix_socket.as_deref(), Some(path.as_path()));
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o770);

    // libpq: SCRAM login, a query, a transaction
    let out = ok(psql_unix(&dir, port, "app", "app", "app", "begin; select 21 * 2; commit"));
    assert!(out.lines().any(|l| l == "42"), "{out}");
    let wrong = psql_unix(&dir, port, "app", "wrong", "app", "select 1");
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("password authentication failed"), "{wrong:?}");

    // tokio-postgres: extended protocol, a prepared statement run twice
    let c = connect_unix(&dir, port, "app").await.unwrap();
    let stmt = c.prepare("select $1::int + 1").await.unwrap();
    for i in 0..2 {
        let row = c.query_one(&stmt, &[&i]).await.unwrap();
        assert_eq!(row.get::<_, i32>(0), i + 1);
    }

    // the console over the socket lists the socket client as PgBouncer does (addr "unix")
    let clients = ok(psql_unix(&dir, port, "app", "app", "pgbouncer", "show clients"));
    let row = clients.lines().find(|l| l.starts_with("C|app|app|")).unwrap_or_else(|| panic!("{clients}"));
    let cols: Vec<&str> = row.split('|').collect();
    assert_eq!((cols[5], cols[6], cols[7]), ("unix", port.to_string().as_str(), "unix"), "{row}");
    // its transactions are counted like any client's
    let stats = ok(psql_unix(&dir, port, "app", "app", "pgbouncer", "show stats"));
    println!("SHOW STATS over the socket:\n{stats}");
    assert!(stats.lines().any(|l| l.starts_with("app|")), "{stats}");
    drop(c);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_requests_over_the_socket_and_over_tcp() {
    let dir = common::TempDir::new("unix-cancel");
    let p = proxy::start(socket_config(&dir)).await;
    let port = proxy::port(&p);
    let c = connect_unix(&dir, port, "app").await.unwrap();

    // over the socket: tokio-postgres connects for the cancel the way it connected the client
    let token = c.cancel_token();
    let running = tokio::spawn(async move {
        let r = c.simple_query("select pg_sleep(60) -- unix-cancel-1").await;
        (c, r)
    });
    wait_running("unix-cancel-1").await;
    token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    let (c, r) = running.await.unwrap();
    assert_eq!(r.unwrap_err().code(), Some(&tokio_postgres::error::SqlState::QUERY_CANCELED));
    assert_eq!(c.query_one("select 7", &[]).await.unwrap().get::<_, i32>(0), 7, "the session goes on");

    // over TCP: the same key cancels the socket client's query
    let token = c.cancel_token();
    let running = tokio::spawn(async move { c.simple_query("select pg_sleep(60) -- unix-cancel-2").await });
    wait_running("unix-cancel-2").await;
    let tcp = tokio::net::TcpStream::connect(p.addr).await.unwrap();
    token.cancel_query_raw(tcp, tokio_postgres::NoTls).await.unwrap();
    let r = running.await.unwrap();
    assert_eq!(r.unwrap_err().code(), Some(&tokio_postgres::error::SqlState::QUERY_CANCELED));
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_tls_on_the_socket_even_when_tcp_requires_it() {
    let dir = common::TempDir::new("unix-tls");
    let mut cfg = socket_config(&dir);
    let certs = common::repo_root().join("certs");
    cfg.tls.mode = TlsMode::Require;
    cfg.tls.cert = certs.join("server.crt").display().to_string();
    cfg.tls.key = certs.join("server.key").display().to_string();
    let p = proxy::start(cfg).await;
    let port = proxy::port(&p);

    // an SSLRequest on the socket is answered 'N', as PostgreSQL and PgBouncer answer it there
    let mut s = tokio::net::UnixStream::connect(dir.join(format!(".s.PGSQL.{port}"))).await.unwrap();
    s.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]).await.unwrap();
    let mut answer = [0u8; 1];
    s.read_exact(&mut answer).await.unwrap();
    assert_eq!(&answer, b"N");
    drop(s);

    // a plain login through the socket is let in; over TCP it is refused
    assert_eq!(ok(psql_unix(&dir, port, "app", "app", "app", "select 'plain'")), "plain");
    let tcp = common::try_connect(port, "app", "app", "app").await.expect_err("plain TCP is refused");
    let message = tcp.as_db_error().map(|e| e.message().to_string()).unwrap_or_default();
    assert!(message.contains("TLS is required"), "{tcp}: {message}");
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hba_local_lines_decide_for_socket_clients() {
    let dir = common::TempDir::new("unix-hba");
    let hba = dir.join("pg_hba.conf");
    std::fs::write(&hba, "local all app trust\nhost all all 127.0.0.1/32 reject\n").unwrap();
    let mut cfg = socket_config(&dir);
    cfg.auth.auth_hba_file = hba.display().to_string();
    cfg.auth.max_failed_logins = 2;
    let p = proxy::start(cfg).await;
    let port = proxy::port(&p);

    // trust by the local line (any password), while TCP clients meet the reject line
    assert_eq!(ok(psql_unix(&dir, port, "app", "not-checked", "app", "select 'trusted'")), "trusted");
    let tcp = common::try_connect(port, "app", "app", "app").await.expect_err("TCP is rejected");
    assert!(tcp.as_db_error().unwrap().message().contains("rejects connection for host \"127.0.0.1\""), "{tcp}");

    // no local line for this user: refused, named the way PostgreSQL names a socket client
    let other = psql_unix(&dir, port, "mallory", "x", "app", "select 1");
    let err = String::from_utf8_lossy(&other.stderr).to_string();
    assert!(err.contains("no pg_hba.conf entry for host \"[local]\", user \"mallory\""), "{err}");
    // refusals count against the socket as one address: the third attempt is cut short
    let _ = psql_unix(&dir, port, "mallory", "x", "app", "select 1");
    let blocked = String::from_utf8_lossy(&psql_unix(&dir, port, "app", "x", "app", "select 1").stderr).to_string();
    assert!(blocked.contains("too many failed logins from host \"[local]\""), "{blocked}");
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_client_conn_counts_socket_and_tcp_clients_together() {
    let dir = common::TempDir::new("unix-max");
    let mut cfg = socket_config(&dir);
    cfg.proxy.max_client_conn = 1;
    let p = proxy::start(cfg).await;
    let port = proxy::port(&p);
    let tcp = common::connect(port, "app", "app", "app").await;
    let err = connect_unix(&dir, port, "app").await.expect_err("the limit applies to the socket too");
    assert_eq!(err.code(), Some(&tokio_postgres::error::SqlState::TOO_MANY_CONNECTIONS), "{err}");
    drop(tcp);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_socket_file_replaces_a_stale_one_refuses_a_live_one_and_goes_at_stop() {
    let dir = common::TempDir::new("unix-file");
    let mut cfg = socket_config(&dir);
    cfg.proxy.listen = format!("127.0.0.1:{}", common::free_port());
    let port: u16 = cfg.proxy.listen.rsplit(':').next().unwrap().parse().unwrap();
    let path = dir.join(format!(".s.PGSQL.{port}"));

    // a live socket of another process: a start error that says so
    let live = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let e = Proxy::start(cfg.clone(), None).await.err().expect("a live socket is in use").to_string();
    assert!(e.contains(&path.display().to_string()) && e.contains("in use"), "{e}");
    // the same file once its process is gone (stale): replaced
    drop(live);
    assert!(path.exists());
    let p = proxy::start(cfg.clone()).await;
    assert_eq!(ok(psql_unix(&dir, port, "app", "app", "app", "select 'replaced'")), "replaced");
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o777, "default mode");
    p.stop().await;
    assert!(!path.exists(), "removed at stop");

    // drain removes it at once (no new clients), before the clients have left
    let p = proxy::start(cfg).await;
    assert!(path.exists());
    let c = connect_unix(&dir, port, "app").await.unwrap();
    let drained = p.drain(Duration::from_secs(5)).await;
    assert!(!path.exists(), "removed at drain");
    println!("drain with an idle socket client finished cleanly: {drained}");
    drop(c);
    p.stop().await;
}

#[test]
fn a_missing_or_non_directory_socket_dir_is_a_config_problem() {
    let dir = common::TempDir::new("unix-check");
    let file = dir.join("plain-file");
    std::fs::write(&file, "x").unwrap();
    let mut cfg = proxy::config(5432, &[]);
    cfg.proxy.unix_socket_dir = dir.join("missing").display().to_string();
    let problems = pgshift::proxy::check(&cfg).unwrap_err().join("\n");
    assert!(problems.contains("cannot use unix_socket_dir") && problems.contains("missing"), "{problems}");
    cfg.proxy.unix_socket_dir = file.display().to_string();
    let problems = pgshift::proxy::check(&cfg).unwrap_err().join("\n");
    assert!(problems.contains("is not a directory"), "{problems}");
    cfg.proxy.unix_socket_dir = dir.display().to_string();
    pgshift::proxy::check(&cfg).unwrap();
}
