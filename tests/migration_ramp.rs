//! The read-shift autopilot against real servers: it raises the target's read share step by step
//! to 100% while the target's reads are healthy, and drops it to 0% at once when the target's
//! reads get slow or fail, saying why; an operator's change stops it.

mod common;

use common::proxy;
use pgshift::migration::control;
use pgshift::migration::ramp::RampState;
use pgshift::migration::Phase;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn config(state: &std::path::Path) -> pgshift::config::Config {
    let bed = common::shared_bed();
    let mut cfg = proxy::config(bed.primary_port, &[]);
    cfg.migration = Some(pgshift::config::MigrationConfig {
        state_file: state.display().to_string(),
        target: pgshift::config::BackendConfig { host: "127.0.0.1".into(), port: bed.target_port },
        sync: pgshift::config::SyncChoice::Statement,
        ramp_start_percent: 10,
        ramp_step_percent: 30,
        ramp_interval: pgshift::config::Dur::millis(300),
        // generous: a loaded test machine makes p95s noisy; the slow target below is far slower
        ramp_max_latency_factor: 5.0,
        ..Default::default()
    });
    cfg.proxy.default_pool_size = 10;
    cfg
}

/// Sessions reading `sql` in a loop until `stop` (errors are expected in one case: not counted).
fn readers(port: u16, sql: String, stop: Arc<AtomicBool>) -> Vec<tokio::task::JoinHandle<()>> {
    (0..24)
        .map(|_| {
            let (sql, stop) = (sql.clone(), stop.clone());
            tokio::spawn(async move {
                let c = common::connect(port, "app", "app", "app").await;
                while !stop.load(Ordering::Relaxed) {
                    let _ = c.simple_query(&sql).await;
                }
            })
        })
        .collect()
}

async fn wait_for(
    shared: &pgshift::shared::Shared,
    what: &str,
    ok: impl Fn(&control::Status) -> bool,
) -> control::Status {
    for _ in 0..300 {
        let s = control::status(shared).unwrap();
        if ok(&s) {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what}: {:?}", control::status(shared).unwrap().ramp);
}

async fn stop_readers(stop: &AtomicBool, handles: Vec<tokio::task::JoinHandle<()>>) {
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.await.unwrap();
    }
    stop.store(false, Ordering::Relaxed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ramp_climbs_while_healthy_and_drops_to_zero_on_a_breach() {
    let bed = common::shared_bed();
    let setup = common::connect(bed.primary_port, "app", "app", "app").await;
    setup.batch_execute("create table if not exists ramp_only_on_source(id int)").await.unwrap();
    let state = std::env::temp_dir().join(format!("pgshift-ramp-{}.json", std::process::id()));
    let _ = std::fs::remove_file(&state);
    let p = proxy::start(config(&state)).await;
    proxy::wait_healthy(&p).await;
    let (port, shared) = (proxy::port(&p), p.shared.clone());
    control::change_phase(&shared, Phase::DualWrite, None).await.unwrap();
    let stop = Arc::new(AtomicBool::new(false));

    // healthy: 10% -> 40% -> 70% -> 100%
    let r = readers(port, "select 1".into(), stop.clone());
    control::start_ramp(&shared).await.unwrap();
    assert_eq!(control::status(&shared).unwrap().read_percent, 10);
    let s = wait_for(&shared, "the ramp reaches 100%", |s| s.ramp.state == RampState::Complete).await;
    assert_eq!((s.phase, s.read_percent), (Phase::ShiftReads, 100));
    stop_readers(&stop, r).await;

    // the target's reads get slow: back to 0% at once, with the reason
    let slow = format!("select pg_sleep(case when inet_server_port() = {} then 0.5 else 0 end)", bed.target_port);
    let r = readers(port, slow, stop.clone());
    control::change_phase(&shared, Phase::DualWrite, None).await.unwrap();
    control::start_ramp(&shared).await.unwrap();
    let s = wait_for(&shared, "a latency breach", |s| s.ramp.state == RampState::Breached).await;
    assert_eq!(s.read_percent, 0);
    assert!(s.ramp.last_breach.as_deref().unwrap().contains("p95 read latency"), "{:?}", s.ramp);
    stop_readers(&stop, r).await;

    // the target's reads fail: 0% again
    let r = readers(port, "select count(*) from ramp_only_on_source".into(), stop.clone());
    control::start_ramp(&shared).await.unwrap();
    let s = wait_for(&shared, "an error breach", |s| s.ramp.breaches == 2).await;
    assert_eq!((s.ramp.state, s.read_percent), (RampState::Breached, 0));
    assert!(s.ramp.last_breach.as_deref().unwrap().contains("reads on the target failed"), "{:?}", s.ramp);
    stop_readers(&stop, r).await;

    // an operator's change stops a running ramp where it is
    let r = readers(port, "select 1".into(), stop.clone());
    control::start_ramp(&shared).await.unwrap();
    control::change_phase(&shared, Phase::ShiftReads, Some(25)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(900)).await;
    let s = control::status(&shared).unwrap();
    assert_eq!((s.ramp.state, s.read_percent), (RampState::Off, 25), "{:?}", s.ramp);
    stop_readers(&stop, r).await;
    control::change_phase(&shared, Phase::Off, None).await.unwrap();
    let _ = std::fs::remove_file(&state);
}
