//! Binary upgrades (SIGUSR2) under load: pgbench with 64 persistent clients runs through two
//! upgrades in a row with no failed transaction and no client disconnected, and a client's cancel
//! key, prepared statement and SET value from before the upgrades still work after them.

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_pgshift")
}

/// A free port, away from the ones the shared test beds and other suites use.
fn port() -> u16 {
    loop {
        let p = common::free_port();
        if ![15442, 15452, 15453, 15454].contains(&p) {
            return p;
        }
    }
}

/// Every pgshift process of the test: the one started here and those started by upgrades
/// (not our children: found by pid in the log). All are killed when the test ends.
struct Fleet {
    first: Child,
    log: PathBuf,
}

impl Fleet {
    /// The pids of the processes started by upgrades, in order.
    fn successors(&self) -> Vec<u32> {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        log.lines()
            .filter(|l| l.contains("started the new binary"))
            .filter_map(|l| l.split("pid=").nth(1)?.split_whitespace().next()?.parse().ok())
            .collect()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        let _ = self.first.kill();
        let _ = self.first.wait();
        for pid in self.successors() {
            let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).stderr(Stdio::null()).status();
        }
    }
}

/// True while `pid` runs (a zombie no longer does).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit(')').next().and_then(|r| r.split_whitespace().next()) != Some("Z"),
        Err(_) => false,
    }
}

fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool, log: &Path) {
    let start = Instant::now();
    while !done() {
        let log = || std::fs::read_to_string(log).unwrap_or_default();
        assert!(start.elapsed() < limit, "{what} within {limit:?}; log:\n{}", log());
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn usr2(pid: u32) {
    assert!(Command::new("kill").args(["-USR2", &pid.to_string()]).status().unwrap().success());
}

fn write_config(dir: &Path, port: u16, admin: u16) -> PathBuf {
    let bed = common::shared_bed();
    let text = format!(
        "[proxy]\nlisten = \"127.0.0.1:{port}\"\ndefault_pool_size = 16\nupgrade_timeout = \"20s\"\n\
         unix_socket_dir = \"{}\"\n\
         [auth]\n[[auth.users]]\nname = \"app\"\npassword = \"app\"\n\
         [primary]\nhost = \"127.0.0.1\"\nport = {}\n[routing]\nrole_discovery = false\n\
         [admin]\nlisten = \"127.0.0.1:{admin}\"\n",
        dir.display(),
        bed.primary_port
    );
    let path = dir.join("proxy.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// GET on the admin port; the body.
fn admin_get(admin: u16, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", admin)).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default()
}

#[test]
fn two_upgrades_under_pgbench_fail_no_transaction_and_drop_no_client() {
    let bed = common::shared_bed();
    let exists =
        common::superuser_exec(bed.primary_port, "select count(*) from pg_database where datname = 'upgrade_bench'");
    if exists.trim() == "0" {
        common::superuser_exec(bed.primary_port, "create database upgrade_bench owner app");
    }
    let init = Command::new("pgbench")
        .args(["-i", "-q", "-s", "1", "-h", "127.0.0.1", "-p", &bed.primary_port.to_string(), "-U", "app"])
        .arg("upgrade_bench")
        .env("PGPASSWORD", "app")
        .output()
        .unwrap();
    assert!(init.status.success(), "{}", String::from_utf8_lossy(&init.stderr));

    let dir = common::TempDir::new("upgrade");
    let (port, admin) = (port(), port());
    let cfg = write_config(&dir, port, admin);
    let log = dir.join("pgshift.log");
    let first = Command::new(bin())
        .args(["--config", cfg.to_str().unwrap()])
        .env("PGSHIFT_LOG", "pgshift=debug")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let first_pid = first.id();
    let mut fleet = Fleet { first, log: log.clone() };
    wait_until(
        "pgshift listens",
        Duration::from_secs(10),
        || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
        &log,
    );

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    // A client with session state from before the upgrades: a setting, a named prepared
    // statement, its cancel key; and a client on the Unix socket.
    let (client, stmt, cancel, unix_client) = rt.block_on(async {
        let c = common::connect(port, "app", "app", "upgrade_bench").await;
        c.batch_execute("set application_name = 'upgrade-survivor'").await.unwrap();
        let stmt = c.prepare("select $1::int + 1").await.unwrap();
        assert_eq!(c.query_one(&stmt, &[&1i32]).await.unwrap().get::<_, i32>(0), 2);
        let cancel = c.cancel_token();
        let unix = format!("host={} port={port} user=app password=app dbname=upgrade_bench", dir.display());
        let (u, conn) = tokio_postgres::connect(&unix, tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(conn);
        u.batch_execute("select 1").await.unwrap();
        (c, stmt, cancel, u)
    });

    let bench = Command::new("pgbench")
        .args(["-n", "-c", "64", "-j", "4", "-T", "20", "-h", "127.0.0.1", "-p", &port.to_string(), "-U", "app"])
        .arg("upgrade_bench")
        .env("PGPASSWORD", "app")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    // First upgrade, mid-run: the first process hands over and exits.
    std::thread::sleep(Duration::from_secs(5));
    usr2(first_pid);
    wait_until(
        "the first process exits",
        Duration::from_secs(30),
        || matches!(fleet.first.try_wait(), Ok(Some(_))),
        &log,
    );
    let status = fleet.first.wait().unwrap();
    assert!(status.success(), "exit status {status}");
    let second = *fleet.successors().first().expect("a successor was started");
    assert!(alive(second));

    // Second upgrade: the new process can itself be upgraded.
    std::thread::sleep(Duration::from_secs(4));
    usr2(second);
    wait_until("a third process is started", Duration::from_secs(10), || fleet.successors().len() == 2, &log);
    wait_until("the second process exits", Duration::from_secs(30), || !alive(second), &log);
    let third = fleet.successors()[1];
    assert!(alive(third));

    let out = bench.wait_with_output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "pgbench failed:\n{stdout}\n{stderr}\nlog:\n{}", fleet.log());
    assert!(stdout.contains("number of failed transactions: 0"), "{stdout}\n{stderr}");
    for bad in ["lost", "terminat", "closed the connection", "aborted", "error"] {
        assert!(!stderr.to_lowercase().contains(bad), "pgbench saw {bad:?}: {stderr}");
    }
    eprintln!("{stdout}");
    let clients = stdout.lines().find(|l| l.starts_with("number of clients:")).unwrap_or_default();
    assert!(clients.contains("64"), "{stdout}");

    rt.block_on(async {
        // Same connection, same session: the setting, the statement and the key all moved.
        let name: String = client.query_one("show application_name", &[]).await.unwrap().get(0);
        assert_eq!(name, "upgrade-survivor");
        assert_eq!(client.query_one(&stmt, &[&41i32]).await.unwrap().get::<_, i32>(0), 42);
        let sleeping = tokio::spawn(async move {
            let started = Instant::now();
            let r = client.batch_execute("select pg_sleep(30)").await;
            (r, started.elapsed())
        });
        tokio::time::sleep(Duration::from_millis(700)).await;
        cancel.cancel_query(tokio_postgres::NoTls).await.expect("the cancel request is accepted");
        let (r, took) = sleeping.await.unwrap();
        let e = r.expect_err("the sleep was cancelled");
        assert_eq!(e.code(), Some(&tokio_postgres::error::SqlState::QUERY_CANCELED), "{e}");
        assert!(took < Duration::from_secs(10), "cancel took {took:?}");
        unix_client.batch_execute("select 1").await.expect("the Unix-socket client moved too");
    });

    // The third process adopted the clients (pgbench's 64 and ours) rather than seeing new logins.
    let stats: serde_json::Value = serde_json::from_str(&admin_get(admin, "/stats")).unwrap();
    let adopted = stats["clients_adopted"].as_u64().unwrap_or(0);
    assert!(adopted >= 66, "adopted {adopted}: {stats}");
    let log = fleet.log();
    assert!(log.contains("upgrade complete"), "{log}");
    assert!(!log.contains("cannot be handed over") && !log.contains("upgrade_timeout"), "a client was closed: {log}");
    eprintln!("{}", log.lines().filter(|l| l.contains("upgrade")).collect::<Vec<_>>().join("\n"));
    assert!(!log.contains("SCRAM-SHA-256$") && !log.contains("password = "), "the log shows a secret");
}

/// Clients inside a transaction when the upgrade starts stay on the old process until their
/// transaction ends, then move; a CancelRequest for one of them reaches it there although new
/// connections (the cancel's) land on the new process.
#[test]
fn clients_in_a_transaction_move_at_its_end_and_can_be_cancelled_meanwhile() {
    let dir = common::TempDir::new("upgrade-tx");
    let (port, admin) = (port(), port());
    let cfg = write_config(&dir, port, admin);
    let log = dir.join("pgshift.log");
    let first = Command::new(bin())
        .args(["--config", cfg.to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let first_pid = first.id();
    let mut fleet = Fleet { first, log: log.clone() };
    wait_until(
        "pgshift listens",
        Duration::from_secs(10),
        || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
        &log,
    );
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (sleeper, in_tx) = rt.block_on(async {
        let sleeper = common::connect(port, "app", "app", "app").await;
        let in_tx = common::connect(port, "app", "app", "app").await;
        in_tx.batch_execute("begin; select 1").await.unwrap();
        (sleeper, in_tx)
    });
    let cancel = sleeper.cancel_token();
    let sleeping = rt.spawn(async move {
        let r = sleeper.batch_execute("select pg_sleep(60)").await;
        (r, sleeper)
    });
    std::thread::sleep(Duration::from_millis(300));
    usr2(first_pid);
    wait_until("the handover starts", Duration::from_secs(10), || fleet.log().contains("handing clients over"), &log);
    std::thread::sleep(Duration::from_millis(300));
    assert!(matches!(fleet.first.try_wait(), Ok(None)), "the old process waits for the two transactions");
    rt.block_on(async {
        // The cancel connects to the new process, which passes it to the old one.
        cancel.cancel_query(tokio_postgres::NoTls).await.unwrap();
        let (r, sleeper) = sleeping.await.unwrap();
        let e = r.expect_err("the sleep was cancelled");
        assert_eq!(e.code(), Some(&tokio_postgres::error::SqlState::QUERY_CANCELED), "{e}");
        in_tx.batch_execute("select 2; commit").await.expect("the open transaction finishes on the old process");
        tokio::time::sleep(Duration::from_millis(500)).await;
        sleeper.batch_execute("select 3").await.expect("the cancelled client moved");
        in_tx.batch_execute("select 4").await.expect("the client that was in a transaction moved");
    });
    wait_until(
        "the old process exits",
        Duration::from_secs(10),
        || matches!(fleet.first.try_wait(), Ok(Some(_))),
        &log,
    );
    let log = fleet.log();
    assert!(log.contains("handed_over=2") && log.contains("closed=0"), "{log}");
}

/// A new process that cannot start (here: the config file became invalid) changes nothing: the
/// old one logs why and keeps its clients and its port.
#[test]
fn a_failed_upgrade_leaves_the_old_process_serving() {
    let dir = common::TempDir::new("upgrade-fail");
    let (port, admin) = (port(), port());
    let cfg = write_config(&dir, port, admin);
    let log = dir.join("pgshift.log");
    let first = Command::new(bin())
        .args(["--config", cfg.to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let first_pid = first.id();
    let mut fleet = Fleet { first, log: log.clone() };
    wait_until(
        "pgshift listens",
        Duration::from_secs(10),
        || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
        &log,
    );
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let kept = rt.block_on(common::connect(port, "app", "app", "app"));
    std::fs::write(&cfg, "[proxy]\ndefault_pool_size = \"lots\"\n").unwrap();
    usr2(first_pid);
    wait_until("the upgrade is abandoned", Duration::from_secs(10), || fleet.log().contains("upgrade abandoned"), &log);
    assert!(matches!(fleet.first.try_wait(), Ok(None)), "the old process keeps running");
    rt.block_on(async {
        kept.batch_execute("select 1").await.expect("its client is still served");
        common::connect(port, "app", "app", "app").await.batch_execute("select 2").await.expect("new clients too");
    });
}
