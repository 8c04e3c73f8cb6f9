//! Backups against real PostgreSQL: `POST /backup` dumps from a replica (the primary only when
//! allowed), the file passes `pg_restore --list` and restores into a fresh server with the same
//! rows, retention by count and age, the token, one backup at a time, names that would leave the
//! directory, the schedule's first run, and the WAL archiver's status on `/metrics`.
//!
//! Each test uses a database of its own on the shared bed (dropped at the end), its own backup
//! directory, and, where it changes server settings, a private cluster.

mod common;

use common::{proxy, psql, shared_bed, superuser_exec, PrivateCluster, TempDir};
use pgshift::config::Config;
use pgshift::proxy::Proxy;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const TOKEN: &str = "test-token";

/// A database of the test's own on the shared primary, owned by app; dropped when done.
struct Db {
    name: &'static str,
    port: u16,
}

impl Db {
    /// Creates the database on the bed's primary and waits until every replica has it (a backup
    /// may be taken from any of them).
    async fn create(name: &'static str) -> Db {
        let bed = shared_bed();
        let port = bed.primary_port;
        superuser_exec(port, &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
        superuser_exec(port, &format!("CREATE DATABASE {name} OWNER app"));
        let exists = format!("SELECT count(*) FROM pg_database WHERE datname = '{name}'");
        for r in &bed.replica_ports {
            wait_for(*r, "postgres", &exists, "1").await;
        }
        Db { name, port }
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        let _ =
            psql(self.port, "postgres", "", "postgres", &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name));
    }
}

/// A proxy config in front of `primary` and `replicas`, user app/app, with `backup` as the body
/// of its `[backup]` section (user app, no schedule unless it says otherwise).
fn config(primary: u16, replicas: &[u16], backup: &str) -> Config {
    let mut text = format!(
        "[proxy]\nlisten = \"127.0.0.1:0\"\ndefault_pool_size = 5\n\
         [auth]\n[[auth.users]]\nname = \"app\"\npassword = \"app\"\n\
         [primary]\nhost = \"127.0.0.1\"\nport = {primary}\n\
         [admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n"
    );
    for r in replicas {
        text.push_str(&format!("[[replicas]]\nhost = \"127.0.0.1\"\nport = {r}\n"));
    }
    let defaults = if backup.contains("schedule") { "" } else { "schedule = 0\n" };
    text.push_str(&format!("[backup]\nuser = \"app\"\n{defaults}{backup}"));
    Config::from_toml(&text).unwrap_or_else(|e| panic!("test config: {e}"))
}

/// `dir = "<path>"` plus `databases = [<db>]`.
fn section(dir: &Path, db: &str) -> String {
    format!("dir = {:?}\ndatabases = [\"{db}\"]\n", dir.display().to_string())
}

/// One HTTP/1.1 request to the admin port with an optional token and body; (status, body).
async fn http(p: &Proxy, method: &str, path: &str, token: Option<&str>, body: &str) -> (u16, String) {
    proxy::admin_http(p, method, path, token, body).await
}

/// `POST /backup` with the token; the status and the JSON answer.
async fn backup(p: &Proxy, body: &str) -> (u16, Value) {
    let (status, text) = http(p, "POST", "/backup", Some(TOKEN), body).await;
    let v = serde_json::from_str(&text).unwrap_or_else(|e| panic!("POST /backup answered non-JSON ({e}): {text}"));
    (status, v)
}

/// The value of the sample `name{labels}` on `/metrics`, if present.
async fn metric(p: &Proxy, sample: &str) -> Option<f64> {
    let (status, text) = http(p, "GET", "/metrics", None, "").await;
    assert_eq!(status, 200, "{text}");
    text.lines().find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Complete backups in `dir` (names of the `<db>-<timestamp>.dump` pattern), oldest first.
fn dumps(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|r| r.flatten().filter_map(|e| e.file_name().into_string().ok()).collect())
        .unwrap_or_default();
    v.retain(|n| n.ends_with(".dump"));
    v.sort();
    v
}

/// Every entry of `dir`, sorted.
fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(dir).unwrap().flatten().map(|e| e.file_name().into_string().unwrap()).collect();
    v.sort();
    v
}

fn pg_tool(name: &str) -> PathBuf {
    let on_path = Command::new(name).arg("--version").output().is_ok_and(|o| o.status.success());
    if on_path {
        PathBuf::from(name)
    } else {
        Path::new("/usr/lib/postgresql/15/bin").join(name)
    }
}

/// Runs psql as postgres against `db` on `port` until `sql` prints `want` (replication catching up).
async fn wait_for(port: u16, db: &str, sql: &str, want: &str) {
    for _ in 0..400 {
        let out = psql(port, "postgres", "", db, sql);
        if String::from_utf8_lossy(&out.stdout).trim() == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("port {port} db {db}: {sql:?} never printed {want:?}");
}

const FINGERPRINT: &str =
    "SELECT count(*) || ' ' || md5(string_agg(id || ':' || name || ':' || price, ',' ORDER BY id)) FROM items";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_from_a_replica_restores_into_a_fresh_server_with_the_same_rows() {
    let bed = shared_bed();
    let db = Db::create("bk_restore").await;
    let dir = TempDir::new("backup-restore");
    let p = proxy::start(config(bed.primary_port, &bed.replica_ports, &section(&dir, db.name))).await;
    proxy::wait_healthy(&p).await;

    // Rows written through pgshift, then seen on every replica.
    let c = common::connect(proxy::port(&p), "app", "app", db.name).await;
    c.batch_execute(
        "CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL, price numeric(10,2));
         INSERT INTO items SELECT i, 'item ' || i, i * 1.25 FROM generate_series(1, 500) i;
         CREATE INDEX items_name ON items (name);",
    )
    .await
    .unwrap();
    let want = String::from_utf8_lossy(&psql(bed.primary_port, "postgres", "", db.name, FINGERPRINT).stdout)
        .trim()
        .to_string();
    assert!(want.starts_with("500 "), "{want}");
    for r in &bed.replica_ports {
        wait_for(*r, db.name, FINGERPRINT, &want).await;
    }

    let (status, v) = backup(&p, "").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["ok"], true, "{v}");
    let one = &v["databases"][0];
    assert_eq!(one["database"], db.name, "{v}");
    // From a replica: the node pgshift names, and the address it dumped, are a replica's.
    assert!(one["node"].as_str().unwrap().starts_with("replica"), "{v}");
    let port: u16 = one["address"].as_str().unwrap().rsplit_once(':').unwrap().1.parse().unwrap();
    assert!(bed.replica_ports.contains(&port), "dumped {port}, replicas are {:?}", bed.replica_ports);

    // The file: where the JSON says, named by the pattern, complete, the newest in its directory.
    let file = PathBuf::from(one["file"].as_str().unwrap());
    let db_dir = dir.join(db.name);
    assert_eq!(file.parent(), Some(db_dir.as_path()));
    let name = file.file_name().unwrap().to_str().unwrap().to_string();
    assert!(pgshift::backup::parse_ts(&name[db.name.len() + 1..name.len() - ".dump".len()]).is_some(), "{name}");
    assert_eq!(entries(&db_dir), vec![name.clone()], "no partial file is left");
    assert_eq!(one["size_bytes"].as_u64(), Some(std::fs::metadata(&file).unwrap().len()));
    let list = Command::new(pg_tool("pg_restore")).arg("--list").arg(&file).output().unwrap();
    assert!(list.status.success(), "{}", String::from_utf8_lossy(&list.stderr));
    assert!(String::from_utf8_lossy(&list.stdout).contains("TABLE public items"));

    // The newest backup restores into a fresh server with the same rows.
    let newest = db_dir.join(dumps(&db_dir).pop().expect("a backup"));
    let fresh = tokio::task::spawn_blocking(|| PrivateCluster::start(0)).await.unwrap();
    superuser_exec(fresh.primary_port(), "CREATE DATABASE restored OWNER app");
    let restore = Command::new(pg_tool("pg_restore"))
        .args(["--exit-on-error", "-h", "127.0.0.1", "-p", &fresh.primary_port().to_string(), "-U", "postgres"])
        .args(["-d", "restored"])
        .arg(&newest)
        .output()
        .unwrap();
    assert!(restore.status.success(), "pg_restore: {}", String::from_utf8_lossy(&restore.stderr));
    let got = String::from_utf8_lossy(&psql(fresh.primary_port(), "postgres", "", "restored", FINGERPRINT).stdout)
        .trim()
        .to_string();
    assert_eq!(got, want);

    // /metrics: the success time (the file's timestamp) and the size.
    let label = format!("{{database=\"{}\"}}", db.name);
    let at = metric(&p, &format!("pgshift_backup_last_success_timestamp_seconds{label}")).await.unwrap();
    let ts = pgshift::backup::parse_ts(&name[db.name.len() + 1..name.len() - ".dump".len()]).unwrap();
    assert!((at - ts as f64 / 1e3).abs() < 0.001, "{at} vs {ts}");
    let size = metric(&p, &format!("pgshift_backup_last_size_bytes{label}")).await.unwrap();
    assert_eq!(size as u64, std::fs::metadata(&file).unwrap().len());
    assert!(metric(&p, &format!("pgshift_backup_last_duration_seconds{label}")).await.unwrap() > 0.0);
    assert_eq!(metric(&p, &format!("pgshift_backup_failures_total{label}")).await, Some(0.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_backup_needs_the_token_and_only_one_runs_at_a_time() {
    let bed = shared_bed();
    let db = Db::create("bk_token").await;
    let dir = TempDir::new("backup-token");
    let p = proxy::start(config(bed.primary_port, &bed.replica_ports, &section(&dir, db.name))).await;

    let (status, body) = http(&p, "POST", "/backup", None, "").await;
    assert_eq!(status, 401, "{body}");
    let (status, body) = http(&p, "POST", "/backup", Some("wrong-token"), "").await;
    assert_eq!(status, 401, "{body}");

    // While a run holds the lock (taken here, as a running backup holds it), a request gets 409.
    let running = p.shared.backup.try_begin().expect("no backup runs yet");
    let (status, v) = backup(&p, "").await;
    assert_eq!(status, 409, "{v}");
    assert!(v["error"].as_str().unwrap().contains("already running"), "{v}");
    assert!(entries(&dir).is_empty(), "refused requests wrote nothing: {:?}", entries(&dir));
    drop(running);

    proxy::wait_healthy(&p).await;
    let (status, v) = backup(&p, "").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(dumps(&dir.join(db.name)).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_keeps_the_newest_by_count_drops_the_old_by_age_and_ignores_other_files() {
    let bed = shared_bed();
    let db = Db::create("bk_retention").await;
    let dir = TempDir::new("backup-retention");
    let db_dir = dir.join(db.name);
    std::fs::create_dir(&db_dir).unwrap();
    // A backup from 2020 (older than keep_days) and files that are not backups of this database.
    let old = format!("{}-20200101T000000.000Z.dump", db.name);
    let others = ["notes.txt", "bk_retention-20200101T000000.000Z.dump.bak", "other-20200101T000000.000Z.dump"];
    for f in std::iter::once(old.as_str()).chain(others) {
        std::fs::write(db_dir.join(f), "not a dump").unwrap();
    }
    let cfg = format!("{}keep_count = 2\nkeep_days = 30\n", section(&dir, db.name));
    let p = proxy::start(config(bed.primary_port, &bed.replica_ports, &cfg)).await;
    proxy::wait_healthy(&p).await;

    let mut made = Vec::new();
    for round in 0..3 {
        let (status, v) = backup(&p, "").await;
        assert_eq!(status, 200, "{v}");
        let one = &v["databases"][0];
        let file = PathBuf::from(one["file"].as_str().unwrap());
        made.push(file.file_name().unwrap().to_str().unwrap().to_string());
        let pruned: Vec<&str> =
            one["pruned"].as_array().map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
        match round {
            0 => assert_eq!(pruned, [old.as_str()], "by age (the count alone would keep it)"),
            1 => assert!(pruned.is_empty(), "{v}"),
            _ => assert_eq!(pruned, [made[0].as_str()], "by count"),
        }
    }
    let mut want: Vec<String> = others.iter().map(|s| s.to_string()).chain(made[1..].iter().cloned()).collect();
    want.sort();
    assert_eq!(entries(&db_dir), want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_names_with_path_characters_cannot_leave_the_directory() {
    let bed = shared_bed();
    let base = TempDir::new("backup-escape");
    let dir = base.join("backups");
    std::fs::create_dir(&dir).unwrap();
    let cfg = format!("dir = {:?}\ndatabases = [\"app\"]\n", dir.display().to_string());
    // No [databases]: every name is served, so only the name check stands between a request
    // and the file system.
    let p = proxy::start(config(bed.primary_port, &bed.replica_ports, &cfg)).await;
    for name in ["../escape", "..", ".", "a/b", "/tmp/abs", "x\\y", "", "new\nline"] {
        let body = serde_json::json!({ "databases": [name] }).to_string();
        let (status, v) = backup(&p, &body).await;
        assert_eq!(status, 400, "{name:?}: {v}");
        assert!(v["error"].as_str().unwrap().contains("database"), "{v}");
    }
    for body in ["{\"databases\": \"app\"}", "not json", "{\"database\": [\"app\"]}"] {
        let (status, v) = backup(&p, body).await;
        assert_eq!(status, 400, "{body}: {v}");
    }
    assert_eq!(entries(&base), ["backups"], "nothing beside the backup directory");
    assert!(entries(&dir).is_empty(), "nothing in it either: {:?}", entries(&dir));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_usable_replica_the_primary_serves_only_when_allowed() {
    let bed = shared_bed();
    let db = Db::create("bk_primary").await;
    let dir = TempDir::new("backup-primary");
    let p = proxy::start(config(bed.primary_port, &[], &section(&dir, db.name))).await;
    let (status, v) = backup(&p, "").await;
    assert_eq!(status, 500, "{v}");
    let one = &v["databases"][0];
    assert_eq!(one["ok"], false, "{v}");
    let why = one["error"].as_str().unwrap();
    assert!(why.contains("has no replica") && why.contains("allow_primary is false"), "{why}");
    assert!(entries(&dir).iter().all(|d| dumps(&dir.join(d)).is_empty()), "no file");
    let label = format!("{{database=\"{}\"}}", db.name);
    assert_eq!(metric(&p, &format!("pgshift_backup_failures_total{label}")).await, Some(1.0));
    assert_eq!(metric(&p, &format!("pgshift_backup_last_success_timestamp_seconds{label}")).await, Some(0.0));
    drop(p);

    let cfg = format!("{}allow_primary = true\n", section(&dir, db.name));
    let p = proxy::start(config(bed.primary_port, &[], &cfg)).await;
    let (status, v) = backup(&p, "").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["databases"][0]["node"], "primary", "{v}");
    assert_eq!(dumps(&dir.join(db.name)).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_with_no_backup_on_disk_runs_one_at_start() {
    let bed = shared_bed();
    let db = Db::create("bk_schedule").await;
    let dir = TempDir::new("backup-schedule");
    let cfg = format!("{}schedule = \"1h\"\n", section(&dir, db.name));
    let p = proxy::start(config(bed.primary_port, &bed.replica_ports, &cfg)).await;
    let label = format!("{{database=\"{}\"}}", db.name);
    let mut done = None;
    for _ in 0..600 {
        done = metric(&p, &format!("pgshift_backup_last_size_bytes{label}")).await;
        if done.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(done.is_some(), "no scheduled backup within a minute");
    assert_eq!(dumps(&dir.join(db.name)).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wal_archivers_status_reaches_metrics() {
    let cluster = tokio::task::spawn_blocking(|| {
        let c = PrivateCluster::start(0);
        superuser_exec(c.primary_port(), "ALTER SYSTEM SET archive_mode = on");
        superuser_exec(c.primary_port(), "ALTER SYSTEM SET archive_command = 'true'");
        c.stop_node(0);
        c.start_node(0);
        c
    })
    .await
    .unwrap();
    let port = cluster.primary_port();
    let switch = "CREATE TABLE IF NOT EXISTS w (x int); INSERT INTO w VALUES (1); SELECT pg_switch_wal()";
    superuser_exec(port, switch);
    wait_for(port, "postgres", "SELECT archived_count > 0 FROM pg_stat_archiver", "t").await;

    let dir = TempDir::new("backup-archiver");
    let cfg = format!("dir = {:?}\narchiver_interval = \"200ms\"\n", dir.display().to_string());
    let p = proxy::start(config(port, &[], &cfg)).await;
    let l = "{cluster=\"default\"}";
    let archived = poll_metric(&p, &format!("pgshift_archiver_archived_total{l}"), |v| v >= 1.0).await;
    assert!(archived >= 1.0);
    let last_ok = metric(&p, &format!("pgshift_archiver_last_archived_timestamp_seconds{l}")).await.unwrap();
    assert!(last_ok > 1.6e9, "{last_ok}");
    assert_eq!(metric(&p, &format!("pgshift_archiver_last_failed_timestamp_seconds{l}")).await, Some(0.0));

    // Archiving breaks: the failure is newer than the last success (what the alert looks for).
    superuser_exec(port, "ALTER SYSTEM SET archive_command = 'false'");
    superuser_exec(port, "SELECT pg_reload_conf()");
    superuser_exec(port, switch);
    poll_metric(&p, &format!("pgshift_archiver_failed_total{l}"), |v| v >= 1.0).await;
    let last_failed = metric(&p, &format!("pgshift_archiver_last_failed_timestamp_seconds{l}")).await.unwrap();
    assert!(last_failed > last_ok, "failed at {last_failed}, archived at {last_ok}");
}

/// Scrapes `/metrics` until `sample` satisfies `ok`; its value.
async fn poll_metric(p: &Proxy, sample: &str, ok: impl Fn(f64) -> bool) -> f64 {
    for _ in 0..600 {
        if let Some(v) = metric(p, sample).await.filter(|v| ok(*v)) {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{sample} never reached the expected value within a minute");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_holding_a_lock_cannot_stall_the_backup() {
    let bed = shared_bed();
    let db = Db::create("bk_lock").await;
    let dir = TempDir::new("backup-lock");
    // The client's own table, locked in a transaction it keeps open (the lock is replayed on
    // the replicas, where pg_dump runs).
    let holder = common::connect(bed.primary_port, "app", "app", db.name).await;
    holder.batch_execute("CREATE TABLE t (x int)").await.unwrap();
    holder.batch_execute("BEGIN; LOCK TABLE t IN ACCESS EXCLUSIVE MODE").await.unwrap();
    let locked = "SELECT count(*) FROM pg_locks WHERE mode = 'AccessExclusiveLock' AND relation = 't'::regclass";
    for r in &bed.replica_ports {
        wait_for(*r, db.name, locked, "1").await;
    }
    let cfg = format!("{}timeout = \"30s\"\nlock_wait_timeout = \"1s\"\n", section(&dir, db.name));
    let p = proxy::start(config(bed.primary_port, &bed.replica_ports, &cfg)).await;
    proxy::wait_healthy(&p).await;

    // pg_dump gives up on the lock after lock_wait_timeout, not after the whole [backup] timeout
    // (hours by default, with every other database's backup queued behind it).
    let t0 = std::time::Instant::now();
    let (status, v) = tokio::time::timeout(Duration::from_secs(60), backup(&p, "")).await.expect("no answer");
    assert_eq!(status, 500, "{v}");
    let why = v["databases"][0]["error"].as_str().unwrap();
    assert!(why.contains("LOCK TABLE"), "{why}");
    assert!(t0.elapsed() < Duration::from_secs(20), "took {:?}: {why}", t0.elapsed());
    assert!(dumps(&dir.join(db.name)).is_empty());

    // Once the lock is gone, the next backup succeeds.
    holder.batch_execute("COMMIT").await.unwrap();
    for r in &bed.replica_ports {
        wait_for(*r, db.name, locked, "0").await;
    }
    let (status, v) = backup(&p, "").await;
    assert_eq!(status, 200, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_name_with_a_quote_cannot_break_metrics() {
    // A client allowed to create databases names one with a double quote; with no names
    // configured every database of the cluster is backed up, this one included.
    let cluster = tokio::task::spawn_blocking(|| PrivateCluster::start(0)).await.unwrap();
    let port = cluster.primary_port();
    let c = common::connect(port, "app", "app", "app").await;
    c.batch_execute("CREATE DATABASE \"bk\"\"quote\"").await.unwrap();
    let dir = TempDir::new("backup-quote");
    let cfg = format!("dir = {:?}\nallow_primary = true\n", dir.display().to_string());
    let p = proxy::start(config(port, &[], &cfg)).await;
    proxy::wait_healthy(&p).await;
    let (status, v) = backup(&p, "").await;
    assert_eq!(status, 200, "{v}");
    assert!(v["databases"].as_array().unwrap().iter().any(|d| d["database"] == "bk\"quote"), "{v}");

    // The label value is escaped as the text format wants; unescaped, the quote ends the value
    // early and Prometheus rejects the whole scrape (every pgshift metric goes dark).
    let (status, text) = http(&p, "GET", "/metrics", None, "").await;
    assert_eq!(status, 200, "{text}");
    assert!(!text.contains("{database=\"bk\"quote\"}"), "unescaped quote in a label:\n{text}");
    assert!(text.contains("pgshift_backup_last_size_bytes{database=\"bk\\\"quote\"}"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_directory_others_can_write_is_refused() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let bed = shared_bed();
    let db = Db::create("bk_perm").await;
    let dir = TempDir::new("backup-perm");
    // Someone else made the database's directory first, writable by all: whoever can write
    // there can swap a finished dump for a hostile one, or the partial file for a symlink
    // that pg_dump then writes through.
    let db_dir = dir.join(db.name);
    std::fs::create_dir(&db_dir).unwrap();
    std::fs::set_permissions(&db_dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let p = proxy::start(config(bed.primary_port, &bed.replica_ports, &section(&dir, db.name))).await;
    proxy::wait_healthy(&p).await;
    let (status, v) = backup(&p, "").await;
    assert_eq!(status, 500, "{v}");
    let why = v["databases"][0]["error"].as_str().unwrap();
    assert!(why.contains("writable"), "{why}");
    assert!(entries(&db_dir).is_empty(), "{:?}", entries(&db_dir));

    // Made private again, it is used, and the dump is readable by its owner only.
    std::fs::set_permissions(&db_dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    let (status, v) = backup(&p, "").await;
    assert_eq!(status, 200, "{v}");
    let file = PathBuf::from(v["databases"][0]["file"].as_str().unwrap());
    assert_eq!(std::fs::metadata(&file).unwrap().mode() & 0o777, 0o600);
}

/// With no database named, a run lists the cluster's databases. A database's owner can close it
/// to connections (`ALLOW_CONNECTIONS false`), and a name may be one no file can carry: either
/// way pg_dump cannot back it up, and the run must report it failed instead of leaving it out
/// and answering ok.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listed_database_that_cannot_be_dumped_fails_the_run() {
    let cluster = tokio::task::spawn_blocking(|| PrivateCluster::start(1)).await.unwrap();
    let (primary, replica) = (cluster.primary_port(), cluster.replica_ports()[0]);
    superuser_exec(primary, "CREATE DATABASE bk_closed OWNER app");
    superuser_exec(primary, "CREATE DATABASE \"bk/slash\" OWNER app");
    let closed = psql(primary, "app", "app", "postgres", "ALTER DATABASE bk_closed ALLOW_CONNECTIONS false");
    assert!(closed.status.success(), "the owner closes its database: {}", String::from_utf8_lossy(&closed.stderr));
    let both =
        "SELECT count(*) FROM pg_database WHERE datname = 'bk/slash' OR (datname = 'bk_closed' AND NOT datallowconn)";
    wait_for(replica, "postgres", both, "2").await;
    let dir = TempDir::new("backup-listed");
    let cfg = format!("dir = {:?}\n", dir.display().to_string());
    let p = proxy::start(config(primary, &[replica], &cfg)).await;
    proxy::wait_healthy(&p).await;
    let (status, v) = backup(&p, "").await;
    assert_eq!(status, 500, "{v}");
    let outcome = |name: &str| {
        let all = v["databases"].as_array().unwrap_or_else(|| panic!("{v}"));
        all.iter().find(|o| o["database"] == name).cloned().unwrap_or_else(|| panic!("{name} missing from {v}"))
    };
    for name in ["app", "postgres"] {
        assert_eq!(outcome(name)["ok"], true, "{v}");
    }
    let closed = outcome("bk_closed");
    assert_eq!(closed["ok"], false, "{v}");
    assert!(closed["error"].as_str().unwrap().contains("ALLOW_CONNECTIONS false"), "{closed}");
    let slash = outcome("bk/slash");
    assert_eq!(slash["ok"], false, "{v}");
    assert!(slash["error"].as_str().unwrap().contains("name"), "{slash}");
    let failures = metric(&p, "pgshift_backup_failures_total{database=\"bk_closed\"}").await;
    assert_eq!(failures, Some(1.0));
    drop(p);
    drop(cluster);
}
