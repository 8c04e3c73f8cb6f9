//! Test-bed helpers for pgshift's integration tests: the shared PostgreSQL clusters started by `scripts/test.sh`, private throwaway clusters for fault injection, and small client helpers.
//!
//! Use it from a file in `tests/` with `mod common;`. Every cluster has the
//! role `app` (password `app`, superuser, scram-sha-256) owning the database
//! `app`; the `postgres` superuser is trusted over 127.0.0.1 without password.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

/// The shared clusters started by `scripts/test.sh` for the whole test run.
///
/// Tests share them: use your own database, role or table names.
#[derive(Debug, Clone)]
pub struct Bed {
    /// Source primary (read-write).
    pub primary_port: u16,
    /// The source primary's streaming replicas (two under `scripts/test.sh`).
    pub replica_ports: Vec<u16>,
    /// A separate primary without replicas: the target of migration tests.
    pub target_port: u16,
}

/// The shared bed, read once from the `PGSHIFT_TEST_*` variables that
/// `scripts/test.sh` exports; panics with instructions when they are absent.
pub fn shared_bed() -> &'static Bed {
    static BED: OnceLock<Bed> = OnceLock::new();
    BED.get_or_init(|| Bed {
        primary_port: port_var("PGSHIFT_TEST_PRIMARY_PORT"),
        replica_ports: env_var("PGSHIFT_TEST_REPLICA_PORTS")
            .split_whitespace()
            .map(|p| parse_port("PGSHIFT_TEST_REPLICA_PORTS", p))
            .collect(),
        target_port: port_var("PGSHIFT_TEST_TARGET_PORT"),
    })
}

fn env_var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: this test needs the PostgreSQL test bed. \
             Run the suite with `scripts/test.sh` (or `scripts/test.sh -- <filter>` \
             for some tests), which starts the clusters and sets PGSHIFT_TEST_*."
        )
    })
}

fn port_var(name: &str) -> u16 {
    parse_port(name, &env_var(name))
}

fn parse_port(name: &str, value: &str) -> u16 {
    value.trim().parse().unwrap_or_else(|_| panic!("{name} holds {value:?}, not a TCP port"))
}

/// The repository root (where `scripts/pgbed.sh` lives).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A throwaway cluster of its own (primary + N streaming replicas) for tests
/// that stop, kill or pause servers. Node 0 is the primary, node `i` replica `i`.
/// Dropping it destroys the cluster (immediate stop, directory removed), also
/// when the test panics. Its methods block (they run `scripts/pgbed.sh`).
#[derive(Debug)]
pub struct PrivateCluster {
    dir: PathBuf,
    primary_port: u16,
    replica_ports: Vec<u16>,
}

impl PrivateCluster {
    /// Starts a new cluster with `replicas` streaming replicas in a fresh temp
    /// dir (under `$PGSHIFT_TEST_BED/private` when set, so `scripts/test.sh`
    /// sweeps leftovers, else under the system temp dir). Takes a few seconds.
    pub fn start(replicas: usize) -> PrivateCluster {
        let mut cluster = PrivateCluster { dir: fresh_dir(), primary_port: 0, replica_ports: Vec::new() };
        // From here on `cluster` is dropped (and the dir destroyed) on panic.
        let replicas = replicas.to_string();
        pgbed(&["start", path_str(&cluster.dir), "--replicas", &replicas]);
        let env = std::fs::read_to_string(cluster.dir.join("ports.env")).expect("pgbed.sh start wrote no ports.env");
        for line in env.lines() {
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            let value = value.trim().trim_matches('"');
            match key.trim() {
                "PRIMARY_PORT" => cluster.primary_port = parse_port(key, value),
                "REPLICA_PORTS" => {
                    cluster.replica_ports = value.split_whitespace().map(|p| parse_port(key, p)).collect()
                }
                _ => {}
            }
        }
        assert!(cluster.primary_port != 0, "no PRIMARY_PORT in ports.env:\n{env}");
        cluster
    }

    /// The primary's port (node 0).
    pub fn primary_port(&self) -> u16 {
        self.primary_port
    }

    /// The replicas' ports: `replica_ports()[i - 1]` is node `i`.
    pub fn replica_ports(&self) -> &[u16] {
        &self.replica_ports
    }

    /// The port of node `i` (0 = primary).
    pub fn port(&self, i: usize) -> u16 {
        self.check(i);
        if i == 0 {
            self.primary_port
        } else {
            self.replica_ports[i - 1]
        }
    }

    /// The cluster's directory (nodes, logs, ports.env).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The data directory of node `i` (0 = primary).
    pub fn data_dir(&self, i: usize) -> PathBuf {
        self.check(i);
        self.dir.join(format!("node{i}"))
    }

    /// Clean shutdown of node `i` (`pg_ctl stop -m fast`, waits).
    pub fn stop_node(&self, i: usize) {
        self.node(i, "stop");
    }

    /// Starts node `i` again on its port and waits until it accepts connections.
    pub fn start_node(&self, i: usize) {
        self.node(i, "start");
    }

    /// Crash: SIGKILL to node `i`'s postmaster; returns once its children are gone.
    pub fn kill_node(&self, i: usize) {
        self.node(i, "kill");
    }

    /// Freezes node `i` (SIGSTOP to the postmaster and all its children):
    /// connections hang instead of failing.
    pub fn pause_node(&self, i: usize) {
        self.node(i, "pause");
    }

    /// Unfreezes node `i` (SIGCONT to the postmaster and all its children).
    pub fn resume_node(&self, i: usize) {
        self.node(i, "resume");
    }

    /// Promotes replica `i` (`pg_ctl promote`, waits until it accepts writes).
    pub fn promote_node(&self, i: usize) {
        self.node(i, "promote");
    }

    /// Sets how the primary commits: with `Some(i)`, every commit waits until replica `i` has
    /// flushed it (`synchronous_standby_names` naming its `application_name`, which is its
    /// `cluster_name`, `node{i}`); with `None`, replication is asynchronous. Either way
    /// `synchronous_commit = on` (PostgreSQL's default; the bed's own is off). Returns once the
    /// primary reports the replicas' sync state accordingly.
    pub fn set_synchronous_replica(&self, replica: Option<usize>) {
        let name = replica.map(|i| {
            assert!((1..=self.replica_ports.len()).contains(&i), "replica {i} does not exist");
            format!("node{i}")
        });
        let port = self.primary_port;
        superuser_exec(port, "ALTER SYSTEM SET synchronous_commit = on");
        superuser_exec(
            port,
            &format!("ALTER SYSTEM SET synchronous_standby_names = '{}'", name.clone().unwrap_or_default()),
        );
        superuser_exec(port, "SELECT pg_reload_conf()");
        let want = match &name {
            Some(n) => format!(
                "select count(*) from pg_stat_replication where application_name = '{n}' and sync_state = 'sync'"
            ),
            None => "select count(*) from pg_stat_replication where sync_state = 'async'".to_string(),
        };
        let expected = if name.is_some() { 1 } else { self.replica_ports.len() };
        for _ in 0..200 {
            if superuser_exec(port, &want) == expected.to_string() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!(
            "the primary did not report its replicas as {name:?} within 10 s: {}",
            superuser_exec(
                port,
                "select string_agg(application_name || '=' || sync_state, ', ') from pg_stat_replication"
            )
        );
    }

    fn node(&self, i: usize, action: &str) {
        self.check(i);
        pgbed(&["node", path_str(&self.dir), &i.to_string(), action]);
    }

    fn check(&self, i: usize) {
        assert!(
            i <= self.replica_ports.len(),
            "node {i} does not exist: this cluster has nodes 0..={}",
            self.replica_ports.len()
        );
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        // Never panic here: this also runs while a failed test unwinds.
        if self.dir.join(".pgbed").exists() {
            match Command::new("bash").arg(pgbed_script()).args(["destroy", path_str(&self.dir)]).output() {
                Ok(out) if out.status.success() => {}
                Ok(out) => eprintln!("pgbed.sh destroy {}: {}", self.dir.display(), output_text(&out)),
                Err(e) => eprintln!("cannot run pgbed.sh destroy {}: {e}", self.dir.display()),
            }
        }
        if self.dir.exists() {
            if let Err(e) = std::fs::remove_dir_all(&self.dir) {
                eprintln!("cannot remove {}: {e}", self.dir.display());
            }
        }
    }
}

fn pgbed_script() -> PathBuf {
    repo_root().join("scripts/pgbed.sh")
}

/// Runs `scripts/pgbed.sh ARGS`, panicking with its output if it fails.
fn pgbed(args: &[&str]) {
    let out = Command::new("bash").arg(pgbed_script()).args(args).output().expect("cannot run bash scripts/pgbed.sh");
    let text = output_text(&out);
    assert!(out.status.success(), "pgbed.sh {} failed ({}):\n{text}", args.join(" "), out.status);
    eprint!("{text}");
}

fn output_text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("temp dir path is not UTF-8")
}

/// A new, empty directory for a private cluster.
fn fresh_dir() -> PathBuf {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let parent = match std::env::var_os("PGSHIFT_TEST_BED") {
        Some(bed) if Path::new(&bed).join("private").is_dir() => Path::new(&bed).join("private"),
        _ => std::env::temp_dir(),
    };
    loop {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = parent.join(format!("pgshift-pc-{}-{n}-{nanos:x}", std::process::id()));
        match std::fs::create_dir(&dir) {
            Ok(()) => return dir,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => panic!("cannot create {}: {e}", dir.display()),
        }
    }
}

/// A folder for one test's own files under the temp dir, deleted when dropped (a panic included),
/// so test runs leave nothing behind. Derefs to its path.
pub struct TempDir(PathBuf);

impl TempDir {
    /// A new empty folder named after NAME, the process and a counter (unique within a run).
    pub fn new(name: &str) -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let d = std::env::temp_dir().join(format!("pgshift-{name}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("cannot create a temp folder");
        TempDir(d)
    }
}

impl std::ops::Deref for TempDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A TCP port that was free on 127.0.0.1 a moment ago (bind to port 0, read
/// it, release it). Another process may grab it before you do.
pub fn free_port() -> u16 {
    loop {
        let listener = TcpListener::bind("127.0.0.1:0").expect("cannot bind 127.0.0.1:0");
        let port = listener.local_addr().expect("no local address").port();
        if !(15432..=15434).contains(&port) {
            return port;
        }
    }
}

/// A libpq/tokio-postgres key-value connection string for 127.0.0.1:`port`.
pub fn conn_str(port: u16, user: &str, password: &str, db: &str) -> String {
    fn quote(v: &str) -> String {
        format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))
    }
    format!(
        "host=127.0.0.1 port={port} user={} password={} dbname={} connect_timeout=10",
        quote(user),
        quote(password),
        quote(db)
    )
}

/// Connects with tokio-postgres (NoTls) and spawns the connection task;
/// panics if the connection fails. Call it inside a tokio runtime.
pub async fn connect(port: u16, user: &str, password: &str, db: &str) -> tokio_postgres::Client {
    try_connect(port, user, password, db)
        .await
        .unwrap_or_else(|e| panic!("connect to 127.0.0.1:{port} as {user} db {db} failed: {e}"))
}

/// Like [`connect`], but returns the error (for tests that expect failures).
pub async fn try_connect(
    port: u16,
    user: &str,
    password: &str,
    db: &str,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) =
        tokio_postgres::connect(&conn_str(port, user, password, db), tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            eprintln!("connection to 127.0.0.1:{port} ended: {e}");
        }
    });
    Ok(client)
}

/// Runs `sql` with `psql -X -v ON_ERROR_STOP=1 -At` against 127.0.0.1:`port`
/// and returns its output unchecked (`status`, `stdout`, `stderr`).
pub fn psql(port: u16, user: &str, password: &str, db: &str, sql: &str) -> Output {
    Command::new("psql")
        .args(["-X", "-v", "ON_ERROR_STOP=1", "-At", "-h", "127.0.0.1"])
        .args(["-p", &port.to_string(), "-U", user, "-d", db, "-c", sql])
        .env("PGPASSWORD", password)
        .env("PGCONNECT_TIMEOUT", "10")
        .output()
        .expect("cannot run psql (is PostgreSQL installed? scripts/test.sh installs it)")
}

/// Runs `sql` as the `postgres` superuser (trust, database `postgres`) for bed
/// setup and inspection; returns the trimmed unaligned output (rows on lines,
/// columns separated by `|`) and panics with psql's stderr if it fails.
pub fn superuser_exec(port: u16, sql: &str) -> String {
    let out = psql(port, "postgres", "", "postgres", sql);
    assert!(
        out.status.success(),
        "psql as postgres on port {port} failed for {sql:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A rustls client config that trusts the CA certificates at `ca` (the dev CA in certs/).
pub fn rustls_client_config(ca: &Path) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(ca).unwrap();
    for c in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// A tokio-postgres TLS connector that trusts the CA certificate at `ca` (the dev CA in certs/).
pub fn rustls_connector(ca: &Path) -> tokio_postgres_rustls::MakeRustlsConnect {
    tokio_postgres_rustls::MakeRustlsConnect::new(rustls_client_config(ca))
}

/// `[fleet] store` for tests: the bed's primary, as the role scripts/pgbed.sh makes for it.
pub const FLEET_STORE: &str = "postgres://pgshift_fleet:pgshift_fleet@/app";

/// Makes the role `iso_low` (no login) the role isolation tests switch to (idempotent).
pub const MAKE_ISO_LOW: &str = "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'iso_low') THEN \
     CREATE ROLE iso_low; END IF; END $$";

/// A client as app/app with extra startup options (`-c name=value`).
pub async fn connect_with_options(port: u16, options: &str) -> tokio_postgres::Client {
    let mut cfg = tokio_postgres::Config::new();
    cfg.host("127.0.0.1").port(port).user("app").password("app").dbname("app").options(options);
    let (client, connection) = cfg.connect(tokio_postgres::NoTls).await.expect("connect with options");
    tokio::spawn(connection);
    client
}

pub mod fake_pg;
pub mod haproxy;
pub mod proxy;
pub mod raw;

/// The first column of the first row of a simple query, as text (None for NULL).
pub async fn scalar(c: &tokio_postgres::Client, sql: &str) -> Option<String> {
    for m in c.simple_query(sql).await.unwrap() {
        if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
            return r.get(0).map(str::to_string);
        }
    }
    panic!("{sql}: no row");
}

/// Runs `sql` on the shared bed's primary as `app` (a superuser) with psql, for objects a test
/// needs made beforehand; panics with psql's message if it fails.
pub fn setup_on_bed(sql: &str) {
    let out = psql(shared_bed().primary_port, "app", "app", "app", sql);
    assert!(out.status.success(), "setup failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// Polls `f` every 50 ms until it holds; fails naming `what` after a minute (a guard against a
/// hang, not a timing assertion).
pub async fn until(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..1200 {
        if f() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("not reached within a minute: {what}");
}
