//! What an attacker on the network or a client with one login can reach through pgshift, against
//! real PostgreSQL: startup parameters that outlive the pool's reset, and the other defects the
//! network-facing review found.

mod common;

use common::{proxy, scalar};

/// Makes the role `iso_low` the role tests switch to (idempotent).
const MAKE_ISO_LOW: &str = "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'iso_low') THEN \
     CREATE ROLE iso_low; END IF; END $$";

/// A client with extra startup options (`-c name=value`).
async fn connect_with_options(port: u16, options: &str) -> tokio_postgres::Client {
    let mut cfg = tokio_postgres::Config::new();
    cfg.host("127.0.0.1").port(port).user("app").password("app").dbname("app").options(options);
    let (client, connection) = cfg.connect(tokio_postgres::NoTls).await.expect("connect with options");
    tokio::spawn(connection);
    client
}

/// A role asked for in the startup packet (`-c role=x`, `-c session_authorization=x`) is replayed
/// as `SET role TO 'x'` on the pooled server; RESET ALL leaves it, so without care the next
/// client on that server runs as that role.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_startup_role_never_reaches_the_next_client() {
    common::setup_on_bed(MAKE_ISO_LOW);
    // Two servers: a client holding one (pinned) leaves the other to the rest.
    let p = proxy::with_pool(2).await;
    let port = proxy::port(&p);
    for options in ["-c role=iso_low", "-c session_authorization=iso_low", "--role=iso_low"] {
        let a = connect_with_options(port, options).await;
        assert_eq!(scalar(&a, "select current_user").await.as_deref(), Some("iso_low"), "{options}");
        let b = common::connect(port, "app", "app", "app").await;
        assert_eq!(scalar(&b, "select current_user").await.as_deref(), Some("app"), "role leaked after {options}");
        assert_eq!(scalar(&a, "select current_user").await.as_deref(), Some("iso_low"), "{options} kept");
        drop(a);
        drop(b);
        let c = common::connect(port, "app", "app", "app").await;
        assert_eq!(scalar(&c, "select current_user").await.as_deref(), Some("app"), "leaked after {options} left");
    }
}

/// A startup `seed` is replayed as `SET seed TO ...`; no reset undoes it, so without care the
/// next client on that server draws random() values another client can predict.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_startup_seed_never_reaches_the_next_client() {
    let direct = common::connect(common::shared_bed().primary_port, "app", "app", "app").await;
    direct.batch_execute("select setseed(0.25)").await.unwrap();
    let mut after_seed = Vec::new();
    for _ in 0..3 {
        after_seed.push(scalar(&direct, "select random()").await);
    }
    let seeded = after_seed[0].clone();
    let p = proxy::with_pool(1).await;
    let port = proxy::port(&p);
    let own = connect_with_options(port, "-c seed=0.25").await;
    assert_eq!(scalar(&own, "select random()").await, seeded, "the client's own seed applies");
    drop(own);
    let a = connect_with_options(port, "-c seed=0.25").await;
    scalar(&a, "select 1").await;
    drop(a);
    let b = common::connect(port, "app", "app", "app").await;
    let got = scalar(&b, "select random()").await;
    assert!(!after_seed.contains(&got), "another client's seed reached this one: {got:?}");
}

/// In shift_reads a session's reads may go to the migration target, and with no target replica
/// to its primary, which accepts writes. A `pgshift:replica` hint or `SET pgshift.route =
/// 'replica'` vouches that a statement reads; on a replica a lie is refused (25006), but on the
/// target's primary the write would land on a store that does not serve writes yet (lost to the
/// source, in conflict with the sync). Only proven reads may take that way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hinted_write_never_lands_on_the_migration_targets_primary() {
    use pgshift::migration::{control, Phase};
    let bed = common::shared_bed();
    for port in [bed.primary_port, bed.target_port] {
        let c = common::connect(port, "app", "app", "app").await;
        c.batch_execute("drop table if exists hn_shift; create table hn_shift(id int primary key)").await.unwrap();
    }
    let state = std::env::temp_dir().join(format!("pgshift-hn-shift-{}.json", std::process::id()));
    let _ = std::fs::remove_file(&state);
    let mut cfg = proxy::config(bed.primary_port, &[]);
    cfg.migration = Some(pgshift::config::MigrationConfig {
        state_file: state.display().to_string(),
        target: pgshift::config::BackendConfig { host: "127.0.0.1".into(), port: bed.target_port },
        verify_database: "app".into(),
        sync: pgshift::config::SyncChoice::Statement,
        ..Default::default()
    });
    let p = proxy::start(cfg).await;
    proxy::wait_healthy(&p).await;
    control::change_phase(&p.shared, Phase::DualWrite, None).await.unwrap();
    control::change_phase(&p.shared, Phase::ShiftReads, Some(100)).await.unwrap();
    let c = common::connect(proxy::port(&p), "app", "app", "app").await;
    let port = scalar(&c, "select inet_server_port()").await.unwrap();
    assert_eq!(port, bed.target_port.to_string(), "at 100% the session reads from the target");

    let _ = c.batch_execute("/* pgshift:replica */ insert into hn_shift values (1)").await;
    let _ = c.batch_execute("set pgshift.route = 'replica'").await;
    let _ = c.batch_execute("insert into hn_shift values (2)").await;
    let _ = c.batch_execute("set pgshift.route = 'auto'").await;

    let source = common::connect(bed.primary_port, "app", "app", "app").await;
    let target = common::connect(bed.target_port, "app", "app", "app").await;
    for id in ["1", "2"] {
        let q = format!("select count(*) from hn_shift where id = {id}");
        let on_source = scalar(&source, &q).await;
        let on_target = scalar(&target, &q).await;
        assert!(
            !(on_target.as_deref() == Some("1") && on_source.as_deref() == Some("0")),
            "row {id} was written to the migration target only"
        );
    }
    drop(p);
    let _ = std::fs::remove_file(&state);
}
