//! `pgshift convert-pgbouncer` on a pgbouncer.ini with several `[databases]` entries on two
//! independent servers (the shared bed's source primary and its target), then pgshift started
//! from the written proxy.toml: every name lands on the server and database PgBouncer would use.

mod common;

use common::{connect, proxy, shared_bed, superuser_exec, TempDir};
use pgshift::config::Config;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

/// Server port, database and role a client really reached.
async fn reached(c: &tokio_postgres::Client) -> (String, String, String) {
    let row = c
        .query_one("SELECT inet_server_port()::text, current_database()::text, current_user::text", &[])
        .await
        .expect("where am I");
    (row.get(0), row.get(1), row.get(2))
}

/// The PgBouncer configuration: `app`, an alias of it and `*` on the source primary; an entry
/// and a forced-user entry on the target server.
fn pgbouncer_ini(primary: u16, target: u16) -> String {
    format!(
        "[databases]\n\
         app = host=127.0.0.1 port={primary} dbname=app\n\
         reporting = host=127.0.0.1 port={primary} dbname=app pool_size=2\n\
         elsewhere = host=127.0.0.1 port={target} dbname=app\n\
         forced = host=127.0.0.1 port={target} dbname=app user=conv_forced password='forced pw'\n\
         * = host=127.0.0.1 port={primary}\n\
         [users]\n\
         app = pool_size=3 max_user_client_connections=50\n\
         [pgbouncer]\n\
         listen_addr = 127.0.0.1\n\
         listen_port = 0\n\
         auth_type = scram-sha-256\n\
         auth_file = userlist.txt\n\
         admin_users = app\n\
         max_db_client_connections = 40\n"
    )
}

/// Runs the binary: `pgshift convert-pgbouncer INI USERLIST -o OUT` in `dir`; the path of OUT.
fn run_converter(dir: &std::path::Path, ini: &str) -> std::path::PathBuf {
    let (ini_path, users, out) = (dir.join("pgbouncer.ini"), dir.join("userlist.txt"), dir.join("proxy.toml"));
    std::fs::write(&ini_path, ini).expect("write ini");
    std::fs::write(&users, "\"app\" \"app\"\n").expect("write userlist");
    let run = Command::new(env!("CARGO_BIN_EXE_pgshift"))
        .arg("convert-pgbouncer")
        .args([&ini_path, &users])
        .arg("-o")
        .arg(&out)
        .output()
        .expect("run pgshift convert-pgbouncer");
    let stderr = String::from_utf8_lossy(&run.stderr);
    println!("convert-pgbouncer said:\n{stderr}");
    assert!(run.status.success(), "exit {:?}: {stderr}", run.status);
    assert!(stderr.contains("valid pgshift configuration"), "{stderr}");
    out
}

#[tokio::test]
async fn every_pgbouncer_database_name_lands_on_its_server() {
    let bed = shared_bed();
    let (primary, target) = (bed.primary_port, bed.target_port);
    superuser_exec(
        target,
        "DO $$ BEGIN CREATE ROLE conv_forced LOGIN PASSWORD 'forced pw'; \
         EXCEPTION WHEN duplicate_object THEN NULL; END $$",
    );
    let dir = TempDir::new("convert-databases");
    let out = run_converter(&dir, &pgbouncer_ini(primary, target));

    let mode = std::fs::metadata(&out).expect("output written").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the output holds passwords");
    let text = std::fs::read_to_string(&out).expect("read output");
    println!("{text}");
    assert!(!text.contains("serves every database"), "no stale note:\n{text}");

    let mut cfg = Config::load(&out).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(cfg.primary.port, primary, "the host most entries use is [primary]");
    assert_eq!(cfg.clusters.len(), 1, "the target is a cluster of its own: {:?}", cfg.clusters);
    assert_eq!(cfg.databases.len(), 5);
    assert_eq!(cfg.users["app"].pool_size, Some(3));
    assert_eq!(cfg.proxy.max_db_client_connections, 40);
    assert_eq!(cfg.proxy.unix_socket_dir, "/tmp", "PgBouncer's default socket directory");
    cfg.proxy.unix_socket_dir = dir.display().to_string(); // keep tests apart
    cfg.admin.listen = "127.0.0.1:0".into(); // PgBouncer has no HTTP admin port; keep tests apart
    let p = proxy::start(cfg).await;
    let port = proxy::port(&p);
    let (primary, target) = (primary.to_string(), target.to_string());
    let at = |port: &str, db: &str, user: &str| (port.to_string(), db.to_string(), user.to_string());

    let app = connect(port, "app", "app", "app").await;
    assert_eq!(reached(&app).await, at(&primary, "app", "app"));
    let alias = connect(port, "app", "app", "reporting").await;
    assert_eq!(reached(&alias).await, at(&primary, "app", "app"), "dbname= makes an alias");
    let other = connect(port, "app", "app", "elsewhere").await;
    assert_eq!(reached(&other).await, at(&target, "app", "app"), "another server through the same port");
    let forced = connect(port, "app", "app", "forced").await;
    assert_eq!(reached(&forced).await, at(&target, "app", "conv_forced"), "user= forces the server role");
    let any = connect(port, "app", "app", "postgres").await;
    assert_eq!(reached(&any).await, at(&primary, "postgres", "app"), "\"*\" serves any other name as itself");
}
