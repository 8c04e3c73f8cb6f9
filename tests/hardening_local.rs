//! Hardening against another local user: what they can do to pgshift's files and channels.

mod common;

use common::proxy;
use pgshift::client::socket_file;

/// `unix_socket_dir` is often `/tmp` (PgBouncer's default, which the converter keeps), where
/// any local user may create files that pgshift cannot remove (the sticky bit). The upgrade
/// binds its new socket under a temporary name there; if that name can be predicted (it was
/// `..s.PGSQL.<port>.upgrade-<pid>`, and pids are sequential), a user who plants files at the
/// next pids makes every binary upgrade fail. A directory stands in for a file we cannot delete.
#[tokio::test]
async fn a_file_planted_at_a_predictable_temporary_name_does_not_block_the_socket_swap() {
    let dir = common::TempDir::new("hl-plant");
    let path = dir.join(".s.PGSQL.6432");
    let (_old, _old_file) = socket_file::bind(&path, 0o777).unwrap();
    let planted = dir.join(format!("..s.PGSQL.6432.upgrade-{}", std::process::id()));
    std::fs::create_dir(&planted).unwrap();
    std::fs::write(planted.join("x"), b"not removable").unwrap();
    let swapped = socket_file::bind_replacing(&path, 0o777);
    assert!(swapped.is_ok(), "a planted file blocked the upgrade's socket: {:?}", swapped.err());
    assert!(std::os::unix::net::UnixStream::connect(&path).is_ok());
}

/// The console answers to two database names, `pgbouncer` and `pgshift`. An hba file written
/// for PgBouncer (or by an operator who knows one name) keeps the console off the network with a
/// line for `pgbouncer`; the other name must not walk around it to a later `all` line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_hba_line_for_one_console_name_covers_the_other() {
    let dir = common::TempDir::new("hl-hba");
    for (named, asked) in [("pgbouncer", "pgshift"), ("pgshift", "pgbouncer")] {
        let file = dir.join(format!("hba-{named}.conf"));
        let rules = format!("host {named} all 0.0.0.0/0 reject\nhost all all 0.0.0.0/0 scram-sha-256\n");
        std::fs::write(&file, rules).unwrap();
        let mut cfg = proxy::config(common::shared_bed().primary_port, &[]);
        cfg.auth.auth_hba_file = file.display().to_string();
        let p = proxy::start(cfg).await;
        let port = proxy::port(&p);
        let got = common::try_connect(port, "app", "app", asked).await;
        let code = got.err().and_then(|e| e.as_db_error().map(|d| d.code().code().to_string()));
        assert_eq!(code.as_deref(), Some("28000"), "a {named} reject line let {asked} in");
        // The line for ordinary databases still applies.
        common::connect(port, "app", "app", "app").await;
    }
}

/// A database client must not steer the fleet. With `[fleet] store` left to its defaults the
/// control table lives on the primary, owned by the first `[auth]` user with a password: the
/// same role applications log in as through pgshift. Such a client can then UPDATE
/// `pgshift.fleet_state` and every instance applies the new phase (`apply_shared` takes any
/// newer version as is), bypassing the admin token, the fence and the phase-transition checks.
/// Ignored: with the defaults this holds; the operator guide says to give the store a role of
/// its own and pgshift warns at start when the store's role is an `[auth]` user. Closing it for
/// the defaults too (refusing that fallback, or a state authenticated with a fleet secret)
/// changes documented defaults.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "open: a client of the store role can forge the fleet's migration state"]
async fn a_database_client_cannot_forge_the_fleet_state() {
    let bed = common::shared_bed();
    let state = common::TempDir::new("hl-fleet");
    let name = format!("t{}-forge", std::process::id());
    let mut cfg = proxy::config(bed.primary_port, &[]);
    cfg.fleet = pgshift::config::FleetConfig { id: 1, name: name.clone(), ..Default::default() };
    cfg.migration = Some(pgshift::config::MigrationConfig {
        state_file: state.join("state.json").display().to_string(),
        target: pgshift::config::BackendConfig { host: "127.0.0.1".into(), port: bed.target_port },
        sync: pgshift::config::SyncChoice::Statement,
        ..Default::default()
    });
    let p = proxy::start(cfg).await;
    let client = common::connect(proxy::port(&p), "app", "app", "app").await;
    let version = "select version from pgshift.fleet_state where fleet = $1";
    let seeded = loop {
        if let Ok(Some(row)) = client.query_opt(version, &[&name]).await {
            break row.get::<_, i64>(0);
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let forge = "update pgshift.fleet_state set state = jsonb_set(state, '{phase}', '\"cutover\"'), \
                 version = version + 1 where fleet = $1";
    client.execute(forge, &[&name]).await.unwrap();
    client.execute("select pg_notify('pgshift_fleet', $1)", &[&name]).await.unwrap();
    // Until the instance has read the forged row (it records the version it applied) or moved.
    for _ in 0..400 {
        let applied = p.shared.fleet.applied.load(std::sync::atomic::Ordering::Acquire);
        if applied > seeded as u64 || p.shared.migration.phase() != pgshift::migration::Phase::Off {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(p.shared.migration.phase(), pgshift::migration::Phase::Off, "a database client moved the fleet");
}
