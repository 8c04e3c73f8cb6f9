//! Host-based access rules (`[auth] auth_hba_file`) against real PostgreSQL: the first matching
//! line picks the method (scram-sha-256, md5, trust) or refuses (reject, no line) with 28000 in
//! PostgreSQL's words; hostssl lines see only TLS clients; reload re-reads the file.

mod common;

use common::proxy;
use pgshift::config::{Config, TlsMode};
use std::path::{Path, PathBuf};

fn certs() -> PathBuf {
    common::repo_root().join("certs")
}

/// A proxy config in front of the shared primary whose rules are `rules`, written in `dir`.
fn hba_config(dir: &Path, rules: &str) -> Config {
    let file = dir.join("pg_hba.conf");
    std::fs::write(&file, rules).unwrap();
    let mut c = proxy::config(common::shared_bed().primary_port, &[]);
    c.auth.auth_hba_file = file.display().to_string();
    c
}

fn create_role(port: u16, name: &str, password: &str) {
    common::superuser_exec(
        port,
        &format!(
            "do $$ begin if not exists (select from pg_roles where rolname = '{name}') then \
             create role {name} login password '{password}'; end if; end $$"
        ),
    );
    common::superuser_exec(port, &format!("grant connect on database app to {name}"));
}

/// The SQLSTATE and message of a failed login.
async fn refused(port: u16, user: &str, password: &str, db: &str) -> (String, String) {
    let Err(err) = common::try_connect(port, user, password, db).await else { panic!("login should fail") };
    let db_err = err.as_db_error().unwrap_or_else(|| panic!("no server error: {err}"));
    (db_err.code().code().to_string(), db_err.message().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_matching_line_picks_the_method_or_refuses() {
    let bed = common::shared_bed();
    create_role(bed.primary_port, "hba_trusted", "trusted-pw");
    let dir = common::TempDir::new("hba");
    let rules = "# pgshift test rules\n\
                 local all all trust\n\
                 host  hba_forbidden all 127.0.0.1/32 reject\n\
                 host  all mallory 0.0.0.0/0 reject\n\
                 host  all hba_trusted 127.0.0.1 255.255.255.255 trust\n\
                 host  app,hba_forbidden \"app\" 127.0.0.1/32 scram-sha-256\n\
                 host  app md5user ::1/128,127.0.0.1/32 md5\n";
    // the comma list in the address column is a mistake: one bad line refuses the whole file
    let bad = hba_config(&dir, rules);
    let problems = pgshift::proxy::Proxy::start(bad, None).await.err().expect("a bad file is refused").to_string();
    assert!(problems.contains("line 7: the address field takes one value"), "{problems}");

    let mut cfg = hba_config(&dir, &rules.replace("::1/128,127.0.0.1/32", "127.0.0.1/32"));
    cfg.auth.users.push(pgshift::config::UserConfig {
        name: "hba_trusted".into(),
        password: Some("trusted-pw".into()),
        ..Default::default()
    });
    let verifier = pgshift::auth::scram::ScramSecret::from_password("md5pw", 4096).to_verifier();
    cfg.auth.users.push(pgshift::config::UserConfig {
        name: "md5user".into(),
        password: Some(verifier),
        ..Default::default()
    });
    let p = proxy::start(cfg).await;
    let port = proxy::port(&p);

    // scram-sha-256 for app on database app
    let c = common::connect(port, "app", "app", "app").await;
    assert_eq!(c.query_one("select 1", &[]).await.unwrap().get::<_, i32>(0), 1);
    assert_eq!(refused(port, "app", "wrong", "app").await.0, "28P01");
    // the reject line for database hba_forbidden comes first
    let (code, msg) = refused(port, "app", "app", "hba_forbidden").await;
    assert_eq!(code, "28000");
    assert_eq!(
        msg,
        "pg_hba.conf rejects connection for host \"127.0.0.1\", user \"app\", database \"hba_forbidden\", SSL off"
    );
    // reject for a user, whatever the password
    let (code, msg) = refused(port, "mallory", "app", "app").await;
    assert_eq!((code.as_str(), msg.contains("rejects connection")), ("28000", true), "{msg}");
    // trust for one user: no password asked, yet pgshift logs into PostgreSQL as it
    let t = common::connect(port, "hba_trusted", "not-the-password", "app").await;
    let who = t.query_one("select current_user::text", &[]).await.unwrap().get::<_, String>(0);
    assert_eq!(who, "hba_trusted");
    // md5 for a user whose only secret is a SCRAM verifier cannot work: 28P01, as in PostgreSQL
    assert_eq!(refused(port, "md5user", "md5pw", "app").await.0, "28P01");
    // no matching line
    let (code, msg) = refused(port, "app", "app", "postgres").await;
    assert_eq!(code, "28000");
    assert_eq!(msg, "no pg_hba.conf entry for host \"127.0.0.1\", user \"app\", database \"postgres\", SSL off");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_rereads_the_file_and_keeps_the_old_rules_on_error() {
    let dir = common::TempDir::new("hba-reload");
    let cfg = hba_config(&dir, "host app app 127.0.0.1/32 scram-sha-256\n");
    let p = proxy::start(cfg.clone()).await;
    let port = proxy::port(&p);
    common::connect(port, "app", "app", "app").await;

    std::fs::write(dir.join("pg_hba.conf"), "host app app 127.0.0.1/32 reject\n").unwrap();
    pgshift::proxy::reload_with(&p.shared, cfg.clone()).unwrap();
    assert_eq!(refused(port, "app", "app", "app").await.0, "28000");

    std::fs::write(dir.join("pg_hba.conf"), "host app app 127.0.0.1/32 trust\nhost all +staff all trust\nhst\n")
        .unwrap();
    let problems = pgshift::proxy::reload_with(&p.shared, cfg.clone()).unwrap_err().join("\n");
    assert!(problems.contains("line 2: group names (+staff) are not supported"), "{problems}");
    assert!(problems.contains("line 3: invalid connection type"), "{problems}");
    // the rules loaded before stay in force
    assert_eq!(refused(port, "app", "app", "app").await.0, "28000");
    // and the config check lists the same problems
    let text = format!(
        "[auth]\nauth_hba_file = {:?}\n[[auth.users]]\nname = \"app\"\npassword = \"app\"\n",
        cfg.auth.auth_hba_file
    );
    let err = Config::from_toml(&text).unwrap_err().to_string();
    assert!(err.contains("line 2:") && err.contains("line 3:"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostssl_lines_admit_only_tls_clients() {
    let dir = common::TempDir::new("hba-ssl");
    let mut cfg = hba_config(&dir, "hostnossl all app all reject\nhostssl app app 127.0.0.1/32 scram-sha-256\n");
    cfg.tls.mode = TlsMode::Prefer;
    cfg.tls.cert = certs().join("server.crt").display().to_string();
    cfg.tls.key = certs().join("server.key").display().to_string();
    let p = proxy::start(cfg).await;
    let port = proxy::port(&p);

    let (code, msg) = refused(port, "app", "app", "app").await;
    assert_eq!(code, "28000");
    assert!(msg.ends_with("SSL off") && msg.contains("rejects connection"), "{msg}");

    let conn = format!("host=localhost port={port} user=app password=app dbname=app sslmode=require");
    let (c, connection) =
        tokio_postgres::connect(&conn, common::rustls_connector(&certs().join("ca.crt"))).await.unwrap();
    tokio::spawn(connection);
    assert_eq!(c.query_one("select 7", &[]).await.unwrap().get::<_, i32>(0), 7);

    // over TLS, a database no line names
    let conn = format!("host=localhost port={port} user=app password=app dbname=postgres sslmode=require");
    let err = tokio_postgres::connect(&conn, common::rustls_connector(&certs().join("ca.crt"))).await.err().unwrap();
    let msg = err.as_db_error().unwrap().message().to_string();
    assert_eq!(msg, "no pg_hba.conf entry for host \"127.0.0.1\", user \"app\", database \"postgres\", SSL on");
}

/// Kills the pgshift binary when the test ends, a panic included.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The binary as operators run it: --check-config lists every bad line; the file is read at start
/// and again on SIGHUP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_reads_the_file_at_start_and_on_sighup() {
    let dir = common::TempDir::new("hba-bin");
    let port = common::free_port();
    let hba = dir.join("pg_hba.conf");
    let config = dir.join("proxy.toml");
    std::fs::write(
        &config,
        format!(
            "[proxy]\nlisten = \"127.0.0.1:{port}\"\n[auth]\nauth_hba_file = {:?}\n[[auth.users]]\nname = \"app\"\n\
             password = \"app\"\n[primary]\nhost = \"127.0.0.1\"\nport = {}\n[admin]\nlisten = \"\"\n",
            hba.display().to_string(),
            common::shared_bed().primary_port
        ),
    )
    .unwrap();
    let bin = env!("CARGO_BIN_EXE_pgshift");
    std::fs::write(&hba, "host all all 127.0.0.1/32 scram-sha-256\nhost all all myhost md5\nhost all +g all md5\n")
        .unwrap();
    let out = std::process::Command::new(bin).args(["--check-config", "-c"]).arg(&config).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("line 2: host names") && stderr.contains("line 3: group names"), "{stderr}");

    std::fs::write(&hba, "host app app 127.0.0.1/32 scram-sha-256\n").unwrap();
    let child = std::process::Command::new(bin)
        .arg("-c")
        .arg(&config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let running = Running(child);
    let mut up = false;
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            up = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(up, "pgshift did not start");
    common::connect(port, "app", "app", "app").await;
    assert_eq!(refused(port, "app", "app", "postgres").await.0, "28000");

    std::fs::write(&hba, "host app app 127.0.0.1/32 reject\n").unwrap();
    let pid = running.0.id().to_string();
    assert!(std::process::Command::new("kill").args(["-HUP", &pid]).status().unwrap().success());
    let mut code = String::new();
    for _ in 0..200 {
        code = match common::try_connect(port, "app", "app", "app").await {
            Ok(_) => "ok".into(),
            Err(e) => e.as_db_error().map(|d| d.code().code().to_string()).unwrap_or_default(),
        };
        if code == "28000" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(code, "28000", "the reject line was not applied after SIGHUP");
}
