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

/// The admin token of `proxy::config`.
const TOKEN: &str = "test-token";

/// A role for the fleet tests' clients: logs in, is no superuser (a superuser can write any table).
const MAKE_FLEET_CLIENT: &str = "DO $$ BEGIN CREATE ROLE fleet_client LOGIN PASSWORD 'fleet_client'; \
     EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$";

/// A proxy in fleet `name` (store: the bed's primary as its own role) with a statement-mode
/// migration, whose clients log in as app or fleet_client.
async fn fleet_member(
    name: &str,
    state: &common::TempDir,
    extra_hba: Option<&std::path::Path>,
) -> pgshift::proxy::Proxy {
    let bed = common::shared_bed();
    let mut cfg = proxy::config(bed.primary_port, &[]);
    cfg.auth.users.push(pgshift::config::UserConfig {
        name: "fleet_client".into(),
        password: Some("fleet_client".into()),
        ..Default::default()
    });
    if let Some(hba) = extra_hba {
        cfg.auth.auth_hba_file = hba.display().to_string();
    }
    cfg.fleet = pgshift::config::FleetConfig {
        id: 1,
        name: name.into(),
        store: common::FLEET_STORE.into(),
        ..Default::default()
    };
    cfg.migration = Some(pgshift::config::MigrationConfig {
        state_file: state.join("state.json").display().to_string(),
        target: pgshift::config::BackendConfig { host: "127.0.0.1".into(), port: bed.target_port },
        sync: pgshift::config::SyncChoice::Statement,
        ..Default::default()
    });
    let p = proxy::start(cfg).await;
    for _ in 0..400 {
        if p.shared.fleet.applied.load(std::sync::atomic::Ordering::Acquire) > 0 {
            return p;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("the fleet state was never seeded: {:?}", p.shared.fleet.status(&p.shared).store_error);
}

/// A database client must not steer the fleet. The control table belongs to the store's role,
/// so a client of any other role cannot rewrite the phase (which every instance would apply,
/// bypassing the admin token and the fence). Nor can it hold the fleet's change lock: advisory
/// locks (which any client of the database can take, refusing every phase change, a rollback
/// included, with 409) are not used, and the locks a client can take on the store's tables
/// without privileges (`pg_relation_size` by oid) do not conflict with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_client_cannot_forge_the_fleet_state_or_block_its_changes() {
    let bed = common::shared_bed();
    common::superuser_exec(bed.primary_port, MAKE_FLEET_CLIENT);
    let state = common::TempDir::new("hl-fleet");
    let name = format!("t{}-forge", std::process::id());
    let p = fleet_member(&name, &state, None).await;
    let client = common::connect(proxy::port(&p), "fleet_client", "fleet_client", "app").await;
    let forge = "update pgshift.fleet_state set state = jsonb_set(state, '{phase}', '\"cutover\"'), \
                 version = version + 1 where fleet = $1";
    let err = client.execute(forge, &[&name]).await.expect_err("a client rewrote the fleet's state");
    assert_eq!(err.code(), Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE), "{err}");
    // The same role straight to PostgreSQL, holding what it can for as long as the changes run.
    let direct = common::connect(bed.primary_port, "fleet_client", "fleet_client", "app").await;
    for key in [format!("pgshift.fleet:{name}"), "pgshift.fleet schema".to_string()] {
        direct.query_one("select pg_advisory_lock(hashtext($1))", &[&key]).await.unwrap();
    }
    direct.batch_execute("begin").await.unwrap();
    let held = "select count(pg_relation_size(c.oid)) from pg_class c join pg_namespace n on n.oid = c.relnamespace \
                where n.nspname = 'pgshift'";
    for phase in ["dual_write", "off"] {
        // ACCESS SHARE on every table there (the fleet's lock table too, once made).
        let tables: i64 = direct.query_one(held, &[]).await.unwrap().get(0);
        assert!(tables >= 2, "the control tables exist ({tables})");
        let body = format!(r#"{{"phase":"{phase}"}}"#);
        let (code, text) = proxy::admin_http(&p, "POST", "/migration/phase", Some(TOKEN), &body).await;
        assert_eq!(code, 200, "a client's lock blocked the change to {phase}: {text}");
    }
    assert_eq!(p.shared.migration.phase(), pgshift::migration::Phase::Off);
}

/// Nor can a client log in through pgshift as the store's role itself (here an hba line would
/// let it in without a password), and an `auth_file` naming that role fails at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_role_cannot_log_in_through_pgshift() {
    let dir = common::TempDir::new("hl-fleet-role");
    let hba = dir.join("hba.conf");
    let rules = "host all pgshift_fleet 127.0.0.1/32 trust\nhost all all 127.0.0.1/32 scram-sha-256\n";
    std::fs::write(&hba, rules).unwrap();
    let name = format!("t{}-role", std::process::id());
    let p = fleet_member(&name, &dir, Some(&hba)).await;
    let got = common::try_connect(proxy::port(&p), "pgshift_fleet", "", "app").await;
    let err = got.expect_err("the store's role logged in through pgshift");
    let db = err.as_db_error().expect("an ErrorResponse");
    assert_eq!(db.code().code(), "28000", "{db:?}");
    assert!(db.message().contains("reserved for pgshift's fleet control table"), "{db:?}");
    // The store's role in an auth_file is refused when the runtime is built (as at start).
    let userlist = dir.join("userlist.txt");
    std::fs::write(&userlist, "\"pgshift_fleet\" \"pgshift_fleet\"\n").unwrap();
    let mut cfg = proxy::config(common::shared_bed().primary_port, &[]);
    cfg.auth.auth_file = userlist.display().to_string();
    cfg.fleet = pgshift::config::FleetConfig { id: 1, store: common::FLEET_STORE.into(), ..Default::default() };
    let problems = pgshift::shared::Runtime::build(cfg, None).err().unwrap_or_default();
    assert!(problems.iter().any(|p| p.contains("logs in as \"pgshift_fleet\"")), "{problems:?}");
}

/// A control table that another role already owns (made by an older pgshift as the
/// application's role, or planted by a client with CREATE on the database) is refused, naming
/// the owner, rather than used: its owner could rewrite the phase.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_control_table_owned_by_another_role_is_refused() {
    let bed = common::shared_bed();
    // A database of the bed's own (scripts/pgbed.sh) for this: app owns it, the store's role may
    // create schemas there.
    let db = "fleet_planted";
    let planted = common::psql(
        bed.primary_port,
        "app",
        "app",
        db,
        "CREATE SCHEMA IF NOT EXISTS pgshift; CREATE TABLE IF NOT EXISTS pgshift.fleet_state (fleet text \
         PRIMARY KEY, version bigint, state jsonb, fence bigint, fence_by int, changed_by int, changed_at \
         timestamptz); GRANT USAGE ON SCHEMA pgshift TO pgshift_fleet; \
         GRANT ALL ON pgshift.fleet_state TO pgshift_fleet",
    );
    assert!(planted.status.success(), "{}", String::from_utf8_lossy(&planted.stderr));
    let dir = common::TempDir::new("hl-fleet-planted");
    let mut cfg = proxy::config(bed.primary_port, &[]);
    let store = format!("postgres://pgshift_fleet:pgshift_fleet@/{db}");
    cfg.fleet = pgshift::config::FleetConfig { id: 1, name: "planted".into(), store, ..Default::default() };
    cfg.migration = Some(pgshift::config::MigrationConfig {
        state_file: dir.join("state.json").display().to_string(),
        target: pgshift::config::BackendConfig { host: "127.0.0.1".into(), port: bed.target_port },
        sync: pgshift::config::SyncChoice::Statement,
        ..Default::default()
    });
    let p = proxy::start(cfg).await;
    let mut error = None;
    for _ in 0..200 {
        error = p.shared.fleet.status(&p.shared).store_error;
        if error.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let error = error.expect("the planted control table was used");
    assert!(error.contains("schema pgshift belongs to app"), "{error}");
    assert!(error.contains("pgshift.fleet_state belongs to app"), "{error}");
    assert_eq!(p.shared.fleet.applied.load(std::sync::atomic::Ordering::Acquire), 0, "a planted state was applied");
    let (code, _) = proxy::admin_http(&p, "POST", "/migration/phase", Some(TOKEN), r#"{"phase":"dual_write"}"#).await;
    assert_ne!(code, 200, "a change went through a planted control table");
}
