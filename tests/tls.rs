//! TLS termination and authentication without plaintext passwords, against real PostgreSQL:
//! libpq and rustls clients, require/verify-full, early-data rejection, verifier-only login,
//! auth_query, auth_file, certificate reload, channel binding, mutual TLS, and TLS to PostgreSQL.

mod common;

use common::proxy;
use pgshift::config::{AuthType, Config, ServerTlsMode, TlsMode};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

fn certs() -> PathBuf {
    common::repo_root().join("certs")
}

fn tls_config(primary: u16, mode: TlsMode) -> Config {
    let mut c = proxy::config(primary, &[]);
    c.tls.mode = mode;
    c.tls.cert = certs().join("server.crt").display().to_string();
    c.tls.key = certs().join("server.key").display().to_string();
    c
}

/// psql with a full libpq connection string; returns (success, stdout, stderr).
fn psql_conn(conninfo: &str, password: &str, sql: &str) -> (bool, String, String) {
    let out = Command::new("psql")
        .args(["-X", "-At", "-v", "ON_ERROR_STOP=1", conninfo, "-c", sql])
        .env("PGPASSWORD", password)
        .env("PGCONNECT_TIMEOUT", "10")
        .output()
        .expect("psql runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

async fn psql_async(conninfo: String, password: &'static str, sql: &'static str) -> (bool, String, String) {
    tokio::task::spawn_blocking(move || psql_conn(&conninfo, password, sql)).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libpq_require_and_verify_full() {
    let p = proxy::start(tls_config(common::shared_bed().primary_port, TlsMode::Prefer)).await;
    let port = proxy::port(&p);
    let ca = certs().join("ca.crt");
    let (ok, out, err) =
        psql_async(format!("host=127.0.0.1 port={port} user=app dbname=app sslmode=require"), "app", "select 1").await;
    assert!(ok && out == "1", "{err}");
    let verify =
        format!("host=localhost port={port} user=app dbname=app sslmode=verify-full sslrootcert={}", ca.display());
    let (ok, out, err) = psql_async(verify, "app", "select 2").await;
    assert!(ok && out == "2", "{err}");
    // a client that trusts another CA refuses us
    let other = format!("host=localhost port={port} user=app dbname=app sslmode=verify-full sslrootcert=/etc/ssl/certs/ca-certificates.crt");
    let (ok, _, _) = psql_async(other, "app", "select 3").await;
    assert!(!ok);
    // channel binding (SCRAM-SHA-256-PLUS, tls-server-end-point)
    let cb = format!("host=127.0.0.1 port={port} user=app dbname=app sslmode=require channel_binding=require");
    let (ok, out, err) = psql_async(cb, "app", "select 4").await;
    assert!(ok && out == "4", "channel binding: {err}");
    let (ok, _, err) = psql_async(
        format!("host=127.0.0.1 port={port} user=app dbname=app sslmode=require channel_binding=require"),
        "bad",
        "select 5",
    )
    .await;
    assert!(!ok && err.contains("password authentication failed"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_postgres_over_rustls() {
    let p = proxy::start(tls_config(common::shared_bed().primary_port, TlsMode::Require)).await;
    let conn = format!("host=localhost port={} user=app password=app dbname=app sslmode=require", proxy::port(&p));
    let (client, connection) =
        tokio_postgres::connect(&conn, common::rustls_connector(&certs().join("ca.crt"))).await.unwrap();
    tokio::spawn(connection);
    let v: i32 = client.query_one("select $1::int", &[&7i32]).await.unwrap().get(0);
    assert_eq!(v, 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_is_refused_under_require() {
    let p = proxy::start(tls_config(common::shared_bed().primary_port, TlsMode::Require)).await;
    let err = common::try_connect(proxy::port(&p), "app", "app", "app").await.err().unwrap();
    let db = err.as_db_error().expect("an ErrorResponse");
    assert_eq!(db.code().code(), "28000");
    assert!(db.message().contains("TLS is required"), "{}", db.message());
}

/// Bytes sent after SSLRequest, before the handshake, must never reach the TLS session
/// (CVE-2021-23214 class): the connection is closed with a protocol violation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_data_after_ssl_request_closes_the_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let p = proxy::start(tls_config(common::shared_bed().primary_port, TlsMode::Prefer)).await;
    let mut s = tokio::net::TcpStream::connect(p.addr).await.unwrap();
    let mut bytes = vec![0, 0, 0, 8, 4, 210, 22, 47];
    bytes.extend_from_slice(b"Q\0\0\0\x0dselect 1\0");
    s.write_all(&bytes).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await.unwrap().unwrap();
    assert_ne!(out.first(), Some(&b'S'), "the proxy must not start TLS after early data");
    assert!(String::from_utf8_lossy(&out).contains("08P01"), "{out:?}");
}

/// Direct TLS (PostgreSQL 17's sslnegotiation=direct): a TLS ClientHello with ALPN "postgresql".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_tls_with_alpn() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let p = proxy::start(tls_config(common::shared_bed().primary_port, TlsMode::Require)).await;
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(certs().join("ca.crt")).unwrap();
    roots.add(rustls_pemfile::certs(&mut pem.as_slice()).next().unwrap().unwrap()).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"postgresql".to_vec()];
    let tcp = tokio::net::TcpStream::connect(p.addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg)).connect(name, tcp).await.unwrap();
    // the startup packet goes inside TLS; the proxy answers with an authentication request
    let mut pkt = vec![0, 0, 0, 0, 0, 3, 0, 0];
    pkt.extend_from_slice(b"user\0app\0database\0app\0\0");
    let len = pkt.len() as u32;
    pkt[..4].copy_from_slice(&len.to_be_bytes());
    tls.write_all(&pkt).await.unwrap();
    let mut first = [0u8; 1];
    tls.read_exact(&mut first).await.unwrap();
    assert_eq!(first[0], b'R', "authentication request inside direct TLS");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verifier_only_config_logs_into_postgres_with_scram() {
    let bed = common::shared_bed();
    let verifier = common::superuser_exec(bed.primary_port, "select rolpassword from pg_authid where rolname = 'app'");
    assert!(verifier.starts_with("SCRAM-SHA-256$"));
    let mut cfg = proxy::config(bed.primary_port, &[]);
    cfg.auth.users[0].password = Some(verifier.clone());
    let p = proxy::start(cfg).await;
    assert!(!p.shared.runtime.load().config.auth.users[0].password.as_deref().unwrap_or("").contains("app\0"));
    let c = common::connect(proxy::port(&p), "app", "app", "app").await;
    assert_eq!(c.query_one("select 41 + 1", &[]).await.unwrap().get::<_, i32>(0), 42);
    let err = common::try_connect(proxy::port(&p), "app", "nope", "app").await.err().unwrap();
    assert_eq!(err.as_db_error().unwrap().code().code(), "28P01");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_query_and_auth_file_without_plaintext() {
    let bed = common::shared_bed();
    common::superuser_exec(
        bed.primary_port,
        "do $$ begin if not exists (select from pg_roles where rolname = 'tls_aq') then create role tls_aq login password 'aq-secret'; end if; end $$",
    );
    common::superuser_exec(bed.primary_port, "grant connect on database app to tls_aq");
    let mut cfg = proxy::config(bed.primary_port, &[]);
    cfg.auth.auth_user = "app".into();
    let p = proxy::start(cfg).await;
    let port = proxy::port(&p);
    let c = common::connect(port, "tls_aq", "aq-secret", "app").await;
    assert_eq!(c.query_one("select current_user::text", &[]).await.unwrap().get::<_, String>(0), "tls_aq");
    let err = common::try_connect(port, "tls_aq", "wrong", "app").await.err().unwrap();
    assert_eq!(err.as_db_error().unwrap().code().code(), "28P01");
    let err = common::try_connect(port, "no_such_role", "x", "app").await.err().unwrap();
    assert_eq!(err.as_db_error().unwrap().code().code(), "28P01");
    drop(p);

    // auth_file (PgBouncer userlist.txt) holding only a verifier
    let dir = common::TempDir::new("tls");
    let verifier =
        common::superuser_exec(bed.primary_port, "select rolpassword from pg_authid where rolname = 'tls_aq'");
    let file = dir.join("userlist.txt");
    std::fs::write(&file, format!("\"tls_aq\" \"{verifier}\"\n")).unwrap();
    let mut cfg = proxy::config(bed.primary_port, &[]);
    cfg.auth.users.clear();
    cfg.auth.auth_file = file.display().to_string();
    let p = proxy::start(cfg).await;
    let c = common::connect(proxy::port(&p), "tls_aq", "aq-secret", "app").await;
    assert_eq!(c.query_one("select 1", &[]).await.unwrap().get::<_, i32>(0), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_reload_keeps_connected_clients() {
    let bed = common::shared_bed();
    let dir = common::TempDir::new("tls");
    for f in ["server.crt", "server.key"] {
        std::fs::copy(certs().join(f), dir.join(f)).unwrap();
    }
    let mut cfg = tls_config(bed.primary_port, TlsMode::Require);
    cfg.tls.cert = dir.join("server.crt").display().to_string();
    cfg.tls.key = dir.join("server.key").display().to_string();
    let path = dir.join("proxy.toml");
    std::fs::write(&path, toml::to_string(&cfg).unwrap()).unwrap();
    let p = pgshift::proxy::Proxy::start(cfg, Some(path.clone())).await.unwrap();
    let conn = format!("host=localhost port={} user=app password=app dbname=app sslmode=require", proxy::port(&p));
    let (old, connection) =
        tokio_postgres::connect(&conn, common::rustls_connector(&certs().join("ca.crt"))).await.unwrap();
    tokio::spawn(connection);
    old.query_one("select 1", &[]).await.unwrap();

    // a new CA and certificate replace the files; SIGHUP-equivalent reload
    let new = dir.join("new");
    let status = Command::new(certs().join("gen.sh")).arg(&new).output().unwrap();
    assert!(status.status.success());
    std::fs::copy(new.join("server.crt"), dir.join("server.crt")).unwrap();
    std::fs::copy(new.join("server.key"), dir.join("server.key")).unwrap();
    p.reload().expect("reload with a good certificate");
    let (fresh, connection) =
        tokio_postgres::connect(&conn, common::rustls_connector(&new.join("ca.crt"))).await.unwrap();
    tokio::spawn(connection);
    fresh.query_one("select 2", &[]).await.unwrap();
    assert!(
        tokio_postgres::connect(&conn, common::rustls_connector(&certs().join("ca.crt"))).await.is_err(),
        "old CA no longer matches"
    );
    old.query_one("select 3", &[]).await.expect("the client connected before the reload keeps working");

    // a broken certificate is refused and the current one stays
    std::fs::write(dir.join("server.crt"), "not a certificate").unwrap();
    let problems = p.reload().expect_err("a broken certificate must be refused");
    assert!(problems.join(" ").contains("certificate"), "{problems:?}");
    let (after, connection) =
        tokio_postgres::connect(&conn, common::rustls_connector(&new.join("ca.crt"))).await.unwrap();
    tokio::spawn(connection);
    after.query_one("select 4", &[]).await.unwrap();
    old.query_one("select 5", &[]).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_with_certificate_authentication() {
    let dir = common::TempDir::new("tls");
    let key = dir.join("client.key");
    std::fs::copy(certs().join("client.key"), &key).unwrap();
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let mut cfg = tls_config(common::shared_bed().primary_port, TlsMode::Require);
    cfg.tls.client_ca = certs().join("ca.crt").display().to_string();
    cfg.auth.kind = AuthType::Cert;
    let p = proxy::start(cfg).await;
    let port = proxy::port(&p);
    let with_cert = |user: &str| {
        format!(
            "host=localhost port={port} user={user} dbname=app sslmode=verify-full sslrootcert={} sslcert={} sslkey={}",
            certs().join("ca.crt").display(),
            certs().join("client.crt").display(),
            key.display()
        )
    };
    let (ok, out, err) = psql_async(with_cert("app"), "", "select current_user").await;
    assert!(ok && out == "app", "{err}");
    let (ok, _, err) = psql_async(with_cert("postgres"), "", "select 1").await;
    assert!(!ok && err.contains("certificate authentication failed"), "{err}");
    let without = format!("host=localhost port={port} user=app dbname=app sslmode=require");
    let (ok, _, _) = psql_async(without, "", "select 1").await;
    assert!(!ok, "a client without a certificate must be refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_toward_postgres_with_verify_full() {
    let cluster = tokio::task::spawn_blocking(|| common::PrivateCluster::start(0)).await.unwrap();
    let data = cluster.data_dir(0);
    for f in ["server.crt", "server.key"] {
        std::fs::copy(certs().join(f), data.join(f)).unwrap();
        let _ = Command::new("chown").args(["postgres:", data.join(f).to_str().unwrap()]).status();
    }
    std::fs::set_permissions(data.join("server.key"), std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    common::superuser_exec(cluster.primary_port(), "alter system set ssl = on");
    common::superuser_exec(cluster.primary_port(), "select pg_reload_conf()");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut cfg = proxy::config(cluster.primary_port(), &[]);
    cfg.tls.server_mode = ServerTlsMode::VerifyFull;
    cfg.tls.server_ca = certs().join("ca.crt").display().to_string();
    let p = proxy::start(cfg).await;
    let c = common::connect(proxy::port(&p), "app", "app", "app").await;
    let ssl: bool = c.query_one("select ssl from pg_stat_ssl where pid = pg_backend_pid()", &[]).await.unwrap().get(0);
    assert!(ssl, "pgshift's server connection is not TLS");
    drop(p);
    // verify-full against a CA that did not sign the server's certificate fails to connect
    let mut cfg = proxy::config(cluster.primary_port(), &[]);
    cfg.tls.server_mode = ServerTlsMode::VerifyFull;
    cfg.tls.server_ca = "/etc/ssl/certs/ca-certificates.crt".into();
    let p = proxy::start(cfg).await;
    let err = common::try_connect(proxy::port(&p), "app", "app", "app").await.err().unwrap();
    let db = err.as_db_error().expect("a proper ErrorResponse");
    assert_eq!(db.code().code(), "08006");
    assert!(!db.message().contains("127.0.0.1"), "no host in client errors: {}", db.message());
    drop(cluster);
}

/// `login_failures` counts refusals only: a port check, a client that hangs up in the middle of
/// its TLS handshake or while asked for its password (psql does that to prompt) is no failed
/// login; a wrong password is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_failures_count_refusals_not_clients_that_hang_up() {
    use std::sync::atomic::Ordering;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let p = proxy::start(tls_config(common::shared_bed().primary_port, TlsMode::Prefer)).await;
    let failures = || p.shared.stats.login_failures.load(Ordering::Relaxed);
    assert_eq!(failures(), 0, "a fresh proxy has no failed login");

    // A TCP port check.
    drop(tokio::net::TcpStream::connect(p.addr).await.unwrap());
    // SSLRequest answered 'S', then a ClientHello cut short and a hang-up.
    let mut s = tokio::net::TcpStream::connect(p.addr).await.unwrap();
    s.write_all(&[0, 0, 0, 8, 4, 210, 22, 47]).await.unwrap();
    let mut answer = [0u8; 1];
    s.read_exact(&mut answer).await.unwrap();
    assert_eq!(&answer, b"S");
    s.write_all(&[0x16, 0x03, 0x01, 0x00, 0x40, 0x01]).await.unwrap();
    drop(s);
    // psql without a password: asked for one, it hangs up (-w: it does not prompt).
    let conninfo = format!("host=127.0.0.1 port={} user=app dbname=app sslmode=disable", proxy::port(&p));
    let out = tokio::task::spawn_blocking(move || {
        Command::new("psql").args(["-X", "-w", &conninfo, "-c", "select 1"]).env_remove("PGPASSWORD").output()
    })
    .await
    .unwrap()
    .expect("psql runs");
    assert!(!out.status.success());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(failures(), 0, "clients that hung up are not failed logins");

    assert!(common::try_connect(proxy::port(&p), "app", "wrong", "app").await.is_err());
    for _ in 0..50 {
        if failures() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(failures(), 1, "a wrong password is one failed login");
}
