//! A fleet sharing its state through the control table on the bed's primary: a phase change made
//! through one instance is in force on all three (the test prints how long that took); `GET
//! /fleet` and `SHOW PEERS` list the members; a change while another instance holds the change
//! lock is refused; an instance killed with SIGKILL behind HAProxy: its clients reconnect to the
//! others, no acknowledged commit is lost, and `/fleet` shows it gone within the heartbeat timeout;
//! one that upgrades (SIGUSR2) or stops (SIGTERM) leaves the list itself.
//!
//! Each test uses a fleet name of its own, so tests running at once never see each other.

mod common;

use common::{haproxy, proxy};
use pgshift::config::{FleetConfig, MigrationConfig, SyncChoice};
use pgshift::migration::Phase;
use pgshift::proxy::Proxy;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const TOKEN: &str = "test-token";

fn fleet_name(test: &str) -> String {
    format!("t{}-{test}", std::process::id())
}

/// A config for instance `id` of fleet `name` (store: the bed's primary, found by default).
fn config(name: &str, id: u16, state: &common::TempDir) -> pgshift::config::Config {
    let bed = common::shared_bed();
    let mut cfg = proxy::config(bed.primary_port, &[]);
    cfg.fleet = FleetConfig { id, name: name.into(), store: common::FLEET_STORE.into(), ..Default::default() };
    cfg.migration = Some(MigrationConfig {
        state_file: state.join(format!("state-{id}.json")).display().to_string(),
        target: pgshift::config::BackendConfig { host: "127.0.0.1".into(), port: bed.target_port },
        sync: SyncChoice::Statement,
        ..Default::default()
    });
    cfg
}

async fn three(name: &str, state: &common::TempDir) -> Vec<Proxy> {
    let mut out = Vec::new();
    for id in 1..=3 {
        out.push(proxy::start(config(name, id, state)).await);
    }
    out
}

/// POSTs a phase change to `p`; the status code and body.
async fn change(p: &Proxy, body: &str) -> (u16, String) {
    proxy::admin_http(p, "POST", "/migration/phase", Some(TOKEN), body).await
}

/// Waits until every instance is in `phase` with `pct`; the time that took.
async fn in_force(fleet: &[Proxy], phase: Phase, pct: u8) -> Duration {
    let t0 = Instant::now();
    while !fleet.iter().all(|p| p.shared.migration.phase() == phase && p.shared.migration.read_percent() == pct) {
        assert!(t0.elapsed() < Duration::from_secs(20), "the fleet did not take {phase:?} {pct}%");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    t0.elapsed()
}

async fn fleet_json(p: &Proxy) -> serde_json::Value {
    let (code, body) = proxy::admin_http(p, "GET", "/fleet", None, "").await;
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn member_ids(v: &serde_json::Value) -> Vec<u64> {
    v["members"].as_array().unwrap().iter().map(|m| m["id"].as_u64().unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_phase_change_through_one_instance_is_in_force_on_all() {
    let state = common::TempDir::new("fleet-phase");
    let name = fleet_name("phase");
    let fleet = three(&name, &state).await;
    let steps: [(usize, &str, Phase, u8); 5] = [
        (0, r#"{"phase":"dual_write"}"#, Phase::DualWrite, 0),
        (1, r#"{"phase":"shift_reads","read_percent":40}"#, Phase::ShiftReads, 40),
        (2, r#"{"phase":"cutover"}"#, Phase::Cutover, 0),
        (0, r#"{"phase":"dual_write"}"#, Phase::DualWrite, 0),
        (1, r#"{"phase":"off"}"#, Phase::Off, 0),
    ];
    for (via, body, phase, pct) in steps {
        let sent = Instant::now();
        let (code, text) = change(&fleet[via], body).await;
        assert_eq!(code, 200, "{body} through instance {}: {text}", via + 1);
        let answered = sent.elapsed();
        let after = in_force(&fleet, phase, pct).await;
        println!(
            "{body} through instance {}: answered in {} ms, in force on all three {} ms after the answer",
            via + 1,
            answered.as_millis(),
            after.as_millis()
        );
    }
    // Every instance lists the three, with the phase each reports.
    let t0 = Instant::now();
    loop {
        let v = fleet_json(&fleet[2]).await;
        if member_ids(&v) == [1, 2, 3] && v["members"].as_array().unwrap().iter().all(|m| m["phase"] == "off") {
            assert_eq!(v["store_reachable"], true);
            assert_eq!(v["fleet"], name.as_str());
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "{v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let out = common::psql(proxy::port(&fleet[0]), "app", "app", "pgshift", "SHOW PEERS");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rows: Vec<&str> = text.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(rows.len(), 3, "{text}");
    assert!(rows[0].starts_with("1|127.0.0.1|") && rows[0].ends_with("|yes"), "{text}");
    let metrics = pgshift::admin::metrics::render(&fleet[1].shared).unwrap();
    assert!(metrics.contains("pgshift_fleet_members 3"), "{metrics}");
    assert!(metrics.contains("pgshift_fleet_store_up 1"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_while_another_instance_holds_the_lock_is_refused() {
    let state = common::TempDir::new("fleet-lock");
    let name = fleet_name("lock");
    let fleet = three(&name, &state).await;
    // Hold the fleet's change lock as an instance in the middle of a change would.
    let bed = common::shared_bed();
    let holder = common::connect(bed.primary_port, "pgshift_fleet", "pgshift_fleet", "app").await;
    let table = pgshift::fleet::store::lock_table(&name);
    holder.batch_execute(&format!("create table if not exists {table} ()")).await.unwrap();
    holder.batch_execute(&format!("begin; lock table {table} in share row exclusive mode")).await.unwrap();
    let (code, body) = change(&fleet[1], r#"{"phase":"dual_write"}"#).await;
    assert_eq!(code, 409, "{body}");
    assert!(body.contains("another instance"), "{body}");
    assert!(fleet.iter().all(|p| p.shared.migration.phase() == Phase::Off), "nothing changed anywhere");
    holder.batch_execute("rollback").await.unwrap();
    let (code, body) = change(&fleet[1], r#"{"phase":"dual_write"}"#).await;
    assert_eq!(code, 200, "{body}");
    in_force(&fleet, Phase::DualWrite, 0).await;
    assert_eq!(change(&fleet[2], r#"{"phase":"off"}"#).await.0, 200);
    in_force(&fleet, Phase::Off, 0).await;
}

/// A pgshift process of the test's, killed with SIGKILL on drop if still running.
struct Process(std::process::Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the pgshift binary as instance `id` of fleet `name`; (process, client addr, admin addr).
fn spawn_binary(name: &str, id: u16, dir: &common::TempDir, extra: &str) -> (Process, String, String) {
    let bed = common::shared_bed();
    let (port, admin) = (common::free_port(), common::free_port());
    let text = format!(
        "[proxy]\nlisten = \"127.0.0.1:{port}\"\ndefault_pool_size = 5\n\
         [auth]\n[[auth.users]]\nname = \"app\"\npassword = \"app\"\n\
         [primary]\nhost = \"127.0.0.1\"\nport = {}\n[admin]\nlisten = \"127.0.0.1:{admin}\"\ntoken = \"{TOKEN}\"\n\
         [fleet]\nid = {id}\nname = \"{name}\"\nstore = \"{}\"\n{extra}\n",
        bed.primary_port,
        common::FLEET_STORE
    );
    let path = dir.join(format!("proxy-{id}.toml"));
    std::fs::write(&path, text).unwrap();
    let log = std::fs::File::create(dir.join(format!("pgshift-{id}.log"))).unwrap();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_pgshift"))
        .args(["--config", path.to_str().unwrap()])
        .stderr(log)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", admin)).is_err() {
        assert!(t0.elapsed() < Duration::from_secs(30), "pgshift {id} did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    (Process(child), format!("127.0.0.1:{port}"), format!("127.0.0.1:{admin}"))
}

/// One client through HAProxy: inserts numbered rows (autocommit), reconnecting after an error.
async fn writer(port: u16, n: u64, stop: Arc<AtomicBool>, acked: Arc<Mutex<Vec<i64>>>, reconnects: Arc<AtomicU64>) {
    let mut seq = 0i64;
    let mut client: Option<tokio_postgres::Client> = None;
    while !stop.load(Ordering::Relaxed) {
        let c = match &client {
            Some(c) if !c.is_closed() => c,
            _ => match common::try_connect(port, "app", "app", "app").await {
                Ok(c) => {
                    if seq > 0 {
                        reconnects.fetch_add(1, Ordering::Relaxed);
                    }
                    client.insert(c)
                }
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        seq += 1;
        let id = (n as i64) * 1_000_000 + seq;
        match c.execute("insert into fleet_kill(id) values ($1)", &[&id]).await {
            Ok(_) => acked.lock().unwrap().push(id),
            Err(_) => client = None,
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_killed_behind_haproxy_loses_no_commit_and_leaves_the_list() {
    let dir = common::TempDir::new("fleet-kill");
    let name = fleet_name("kill");
    let bed = common::shared_bed();
    let setup = common::connect(bed.primary_port, "app", "app", "app").await;
    setup
        .batch_execute("drop table if exists fleet_kill; create table fleet_kill(id bigint primary key)")
        .await
        .unwrap();
    let mut a = config(&name, 1, &dir);
    a.migration = None;
    let mut c = config(&name, 3, &dir);
    c.migration = None;
    let (a, c) = (proxy::start(a).await, proxy::start(c).await);
    let (victim, b_addr, b_admin) = spawn_binary(&name, 2, &dir, "");
    let backends = vec![
        haproxy::backend(&a),
        (b_addr, b_admin.rsplit(':').next().unwrap().parse().unwrap()),
        haproxy::backend(&c),
    ];
    let Some(ha) = haproxy::HaProxy::start(&backends).await else { return };
    // All three in the list before the kill.
    let t0 = Instant::now();
    while member_ids(&fleet_json(&a).await) != [1, 2, 3] {
        assert!(t0.elapsed() < Duration::from_secs(15), "{}", fleet_json(&a).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (stop, acked, reconnects) =
        (Arc::new(AtomicBool::new(false)), Arc::new(Mutex::new(Vec::new())), Arc::new(AtomicU64::new(0)));
    let workers: Vec<_> =
        (0..6).map(|n| tokio::spawn(writer(ha.port, n, stop.clone(), acked.clone(), reconnects.clone()))).collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before_kill = acked.lock().unwrap().len();
    drop(victim); // SIGKILL
    let killed = Instant::now();
    let timeout = FleetConfig::default().heartbeat_timeout.0;
    while member_ids(&fleet_json(&a).await).contains(&2) {
        assert!(killed.elapsed() < timeout * 4, "instance 2 still listed: {}", fleet_json(&a).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let gone_after = killed.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    let rows: Vec<i64> =
        setup.query("select id from fleet_kill", &[]).await.unwrap().iter().map(|r| r.get(0)).collect();
    let rows: std::collections::HashSet<i64> = rows.into_iter().collect();
    let lost: Vec<&i64> = acked.iter().filter(|id| !rows.contains(id)).collect();
    println!(
        "killed instance 2: gone from /fleet after {} ms (heartbeat_timeout {} ms); {} commits acknowledged \
         ({} before the kill), {} lost; {} reconnects through HAProxy",
        gone_after.as_millis(),
        timeout.as_millis(),
        acked.len(),
        before_kill,
        lost.len(),
        reconnects.load(Ordering::Relaxed)
    );
    assert!(lost.is_empty(), "acknowledged commits missing: {lost:?}");
    assert!(reconnects.load(Ordering::Relaxed) >= 1, "the killed instance's clients reconnected");
    assert!(acked.len() > before_kill, "writes went on through the other instances");
    assert_eq!(member_ids(&fleet_json(&c).await), [1, 3]);
    drop(ha);
    setup.batch_execute("drop table fleet_kill").await.unwrap();
}

/// True while `pid` runs (a zombie no longer does).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit(')').next().and_then(|r| r.split_whitespace().next()) != Some("Z"),
        Err(_) => false,
    }
}

/// A process started by a binary upgrade (not our child), killed on drop.
struct Successor(u32);

impl Drop for Successor {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill").args(["-KILL", &self.0.to_string()]).status();
    }
}

/// Waits (at most 30 s) until `done` holds.
async fn until<F: std::future::Future<Output = bool>>(what: &str, mut done: impl FnMut() -> F) {
    let t0 = Instant::now();
    while !done().await {
        assert!(t0.elapsed() < Duration::from_secs(30), "{what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An instance that hands over to a new binary (SIGUSR2) or stops (SIGTERM) leaves the member list
/// itself. With a heartbeat_timeout of two minutes nothing else explains the new process holding
/// the id (ready) or the stopped one gone from the list within the test's 30 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_that_upgrades_or_stops_leaves_the_list_itself() {
    let dir = common::TempDir::new("fleet-leave");
    let name = fleet_name("leave");
    let mut cfg = config(&name, 1, &dir);
    cfg.fleet.heartbeat_timeout.0 = Duration::from_secs(120);
    let a = proxy::start(cfg).await;
    let (old, _, b_admin) = spawn_binary(&name, 2, &dir, "heartbeat_timeout = \"120s\"");
    until("instance 2 listed", || async { member_ids(&fleet_json(&a).await) == [1, 2] }).await;
    let old_pid = old.0.id();
    assert!(std::process::Command::new("kill").args(["-USR2", &old_pid.to_string()]).status().unwrap().success());
    let log = dir.join("pgshift-2.log");
    until("the old process exits after the handover", || async move { !alive(old_pid) }).await;
    drop(old);
    let text = std::fs::read_to_string(&log).unwrap();
    let new_pid: u32 = text
        .lines()
        .filter(|l| l.contains("started the new binary"))
        .find_map(|l| l.split("pid=").nth(1)?.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no successor in the log:\n{text}"));
    let new = Successor(new_pid);
    until("the successor holds id 2 and is ready", || async {
        proxy::admin_http_at(&b_admin, "GET", "/ready", None, "").await.0 == 200
            && member_ids(&fleet_json(&a).await) == [1, 2]
    })
    .await;
    assert!(std::process::Command::new("kill").args(["-TERM", &new.0.to_string()]).status().unwrap().success());
    until("the stopped instance leaves the list", || async { member_ids(&fleet_json(&a).await) == [1] }).await;
    until("the stopped instance exits", || async { !alive(new_pid) }).await;
}
