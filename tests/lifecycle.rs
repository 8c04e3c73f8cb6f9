//! The `pgshift` binary as operators run it: --check-config, SIGTERM drain under pgbench, SIGHUP
//! reload (good and bad), and logs that never show a password, a verifier or a connection URL.

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SECRET: &str = "Lif3cycle-S3cret!";

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_pgshift")
}

struct Running {
    child: Child,
    log: PathBuf,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn write_config(dir: &Path, port: u16, extra_users: &str, pool: usize) -> PathBuf {
    let bed = common::shared_bed();
    let text = format!(
        "[proxy]\nlisten = \"127.0.0.1:{port}\"\ndefault_pool_size = {pool}\nshutdown_timeout = \"10s\"\n\
         [auth]\n[[auth.users]]\nname = \"app\"\npassword = \"app\"\n{extra_users}\
         [primary]\nhost = \"127.0.0.1\"\nport = {}\n[admin]\nlisten = \"\"\n",
        bed.primary_port
    );
    let path = dir.join("proxy.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn start(dir: &Path, config: &Path, port: u16) -> Running {
    let log = dir.join("pgshift.log");
    let child = Command::new(bin())
        .args(["--config", config.to_str().unwrap()])
        .env("PGSHIFT_LOG", "pgshift=debug")
        .stderr(std::fs::File::create(&log).unwrap())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let running = Running { child, log };
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return running;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("pgshift did not start: {}", std::fs::read_to_string(&running.log).unwrap_or_default());
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill").args([sig, &child.id().to_string()]).status().unwrap().success();
    assert!(ok);
}

#[test]
fn check_config_lists_every_problem() {
    let dir = common::TempDir::new("check");
    let path = dir.join("bad.toml");
    std::fs::write(
        &path,
        "[proxy]\nlisten = \"nowhere\"\ndefault_pool_size = 0\nbogus = 1\n[auth]\n[[auth.users]]\nname = \"x\"\n",
    )
    .unwrap();
    let out = Command::new(bin()).args(["--check-config", "--config", path.to_str().unwrap()]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    for needle in ["listen", "default_pool_size", "bogus", "no password"] {
        assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
    }
    let good = write_config(&dir, common::free_port(), "", 5);
    let out =
        Command::new(bin()).args(["--check-config", "--print", "--config", good.to_str().unwrap()]).output().unwrap();
    assert!(out.status.success());
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(printed.contains("default_pool_size = 5") && printed.contains("<redacted>"), "{printed}");
    assert!(!printed.contains("password = \"app\""));
}

/// SIGTERM: stop accepting, let running transactions finish, close idle clients at a boundary,
/// exit 0 — pgbench sees no failed transaction.
#[test]
fn sigterm_drains_pgbench_without_failed_transactions() {
    let bed = common::shared_bed();
    let init = Command::new("pgbench")
        .args(["-i", "-q", "-s", "1", "-h", "127.0.0.1", "-p", &bed.primary_port.to_string(), "-U", "app", "app"])
        .env("PGPASSWORD", "app")
        .output()
        .unwrap();
    assert!(init.status.success());
    let dir = common::TempDir::new("drain");
    let port = common::free_port();
    let cfg = write_config(&dir, port, "", 4);
    let mut proxy = start(&dir, &cfg, port);
    let mut bench = Command::new("pgbench")
        .args(["-n", "-c", "8", "-j", "2", "-T", "20", "-h", "127.0.0.1", "-p", &port.to_string(), "-U", "app", "app"])
        .env("PGPASSWORD", "app")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let sent = Instant::now();
    signal(&proxy.child, "-TERM");
    let status = loop {
        if let Some(s) = proxy.child.try_wait().unwrap() {
            break s;
        }
        assert!(sent.elapsed() < Duration::from_secs(15), "pgshift did not exit within shutdown_timeout");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "exit status {status}");
    let _ = bench.wait();
    let mut out = String::new();
    bench.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    bench.stderr.take().unwrap().read_to_string(&mut out).unwrap();
    assert!(
        !out.contains("number of failed transactions: ") || out.contains("number of failed transactions: 0"),
        "{out}"
    );
    assert!(!out.contains("server closed the connection unexpectedly"), "a transaction was cut: {out}");
    assert!(out.contains("shutting down"), "clients were closed at a boundary with 57P01: {out}");
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err(), "still accepting after exit");
    let log = std::fs::read_to_string(&proxy.log).unwrap();
    assert!(log.contains("SIGTERM"), "{log}");
}

/// SIGHUP applies users and pool sizes without dropping connected clients; an invalid file is
/// refused and the running configuration stays.
#[test]
fn sighup_reload_keeps_clients_and_refuses_bad_config() {
    let bed = common::shared_bed();
    common::superuser_exec(
        bed.primary_port,
        &format!("do $$ begin if not exists (select from pg_roles where rolname = 'lc_new') then create role lc_new login; end if; end $$; alter role lc_new password '{SECRET}'"),
    );
    common::superuser_exec(bed.primary_port, "grant connect on database app to lc_new");
    let dir = common::TempDir::new("hup");
    let port = common::free_port();
    let cfg = write_config(&dir, port, "", 3);
    let proxy = start(&dir, &cfg, port);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let kept = common::connect(port, "app", "app", "app").await;
        kept.batch_execute("select 1").await.unwrap();
        assert!(common::try_connect(port, "lc_new", SECRET, "app").await.is_err(), "lc_new is not configured yet");
        write_config(&dir, port, &format!("[[auth.users]]\nname = \"lc_new\"\npassword = \"{SECRET}\"\n"), 6);
        signal(&proxy.child, "-HUP");
        tokio::time::sleep(Duration::from_millis(500)).await;
        let newcomer = common::connect(port, "lc_new", SECRET, "app").await;
        newcomer.batch_execute("select 1").await.unwrap();
        kept.batch_execute("select 2").await.expect("a connected client survives the reload");
        std::fs::write(&cfg, "[proxy]\ndefault_pool_size = \"lots\"\n").unwrap();
        signal(&proxy.child, "-HUP");
        tokio::time::sleep(Duration::from_millis(500)).await;
        kept.batch_execute("select 3").await.unwrap();
        common::connect(port, "lc_new", SECRET, "app").await.batch_execute("select 4").await.unwrap();
        // wrong passwords and a missing role, for the log check below
        let _ = common::try_connect(port, "lc_new", "wrong-password", "app").await;
        let _ = common::try_connect(port, "app", SECRET, "no_such_db").await;
    });
    let log = std::fs::read_to_string(&proxy.log).unwrap();
    assert!(log.contains("reload refused"), "{log}");
    assert!(log.contains("configuration reloaded"), "{log}");
    let verifier =
        common::superuser_exec(bed.primary_port, "select rolpassword from pg_authid where rolname = 'lc_new'");
    for secret in [SECRET, "wrong-password", verifier.as_str(), "postgres://", "SCRAM-SHA-256$"] {
        assert!(!log.contains(secret), "the log shows {secret:?}");
    }
    assert!(!log.contains(&format!("127.0.0.1:{}", bed.primary_port)), "the log names a backend host");
}
