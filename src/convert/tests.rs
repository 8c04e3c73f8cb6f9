//! Tests of `pgshift convert-pgbouncer`, including the fixture pair in tests/fixtures/.

use super::*;
use crate::config::{AuthType, Dur, PoolMode, ServerTlsMode, TlsMode};

const FIXTURE_INI: &str = include_str!("../../tests/fixtures/pgbouncer.ini");
const FIXTURE_EXPECTED: &str = include_str!("../../tests/fixtures/pgbouncer.expected.toml");

fn notes_about<'a>(c: &'a Conversion, needle: &str) -> Vec<&'a Note> {
    c.notes.iter().filter(|n| n.setting.contains(needle)).collect()
}

/// The realistic pgbouncer.ini converts to exactly the expected proxy.toml. After an intended
/// change of the output, regenerate it with UPDATE_FIXTURES=1 and review the diff.
#[test]
fn fixture_pair() {
    let c = convert("pgbouncer.ini", FIXTURE_INI, None).unwrap();
    if std::env::var_os("UPDATE_FIXTURES").is_some() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/pgbouncer.expected.toml");
        std::fs::write(path, &c.toml).unwrap();
    }
    assert_eq!(c.toml, FIXTURE_EXPECTED, "output differs from tests/fixtures/pgbouncer.expected.toml");
    // The fixture names PgBouncer's own files under /etc: "valid" means what start accepts, so each
    // file this host cannot read is a problem. A host with Debian's pgbouncer package has a (empty)
    // userlist.txt: then the user it lacks is the problem instead.
    let files = ["/etc/pgbouncer/tls/server.crt", "/etc/pgbouncer/tls/server.key", "/etc/pgbouncer/tls/ca.crt"];
    let files = files.iter().chain(&["/etc/ssl/certs/db-ca.pem", "/etc/pgbouncer/userlist.txt"]);
    for file in files {
        let reported = c.problems.iter().any(|p| p.contains(file));
        assert_eq!(reported, std::fs::read(file).is_err(), "{file}: {:?}", c.problems);
    }
    let userlist_here = std::fs::read("/etc/pgbouncer/userlist.txt").is_ok();
    let user_problem = c.problems.iter().any(|p| p.contains("billing_svc\" has no password here"));
    assert_eq!(user_problem, userlist_here, "{:?}", c.problems);
    // its socket directory is checked as start checks it: absent on hosts without PostgreSQL
    let socket_dir_here = std::path::Path::new("/var/run/postgresql").is_dir();
    let dir_problem = c.problems.iter().any(|p| p.contains("cannot use unix_socket_dir /var/run/postgresql"));
    assert_eq!(dir_problem, !socket_dir_here, "{:?}", c.problems);
    let expected = |p: &String| p.contains("cannot read") || p.contains("unix_socket_dir") || p.contains("billing_svc");
    assert!(c.problems.iter().all(expected), "{:?}", c.problems);
    assert!(!c.has_secrets);

    let cfg = Config::from_toml(&c.toml).unwrap();
    let p = &cfg.proxy;
    assert_eq!(p.listen, "0.0.0.0:6432");
    assert_eq!(p.unix_socket_dir, "/var/run/postgresql");
    assert_eq!(p.pool_mode, PoolMode::Transaction);
    assert_eq!((p.default_pool_size, p.min_pool_size, p.reserve_pool_size), (40, 5, 10));
    assert_eq!(p.max_client_conn, 2000);
    assert_eq!(p.max_prepared_statements, 500);
    assert_eq!(p.reserve_pool_timeout, Dur::secs(3));
    assert_eq!(p.server_lifetime, Dur::secs(1800));
    assert_eq!(p.server_idle_timeout, Dur::secs(300));
    assert_eq!(p.server_connect_timeout, Dur::secs(5));
    assert_eq!(p.server_check_delay, Dur::secs(10));
    assert_eq!(p.query_wait_timeout, Dur::secs(60));
    assert_eq!(p.client_login_timeout, Dur::secs(30));
    assert_eq!(p.query_timeout, Dur::secs(0));
    assert_eq!(cfg.auth.kind, AuthType::ScramSha256);
    assert_eq!(cfg.auth.auth_file, "/etc/pgbouncer/userlist.txt");
    assert_eq!(cfg.admin.admin_users, ["postgres", "ops"]);
    assert_eq!(cfg.tls.mode, TlsMode::Require);
    assert_eq!(cfg.tls.cert, "/etc/pgbouncer/tls/server.crt");
    assert_eq!(cfg.tls.client_ca, "/etc/pgbouncer/tls/ca.crt");
    assert_eq!(cfg.tls.server_mode, ServerTlsMode::VerifyFull);
    assert_eq!(cfg.tls.server_ca, "/etc/ssl/certs/db-ca.pem");
    assert_eq!(cfg.primary.address(), "10.20.0.11:5432");
    assert!(cfg.replicas.is_empty());
    assert_eq!((p.max_db_connections, p.max_user_client_connections), (100, 500));
    fixture_topology(&cfg);

    // What could not be mapped is reported with a reason.
    assert_eq!(notes_about(&c, "logfile")[0].kind, NoteKind::NotMapped);
    assert_eq!(notes_about(&c, "billing host=")[0].kind, NoteKind::Different, "multi-host: roles are discovered");
    assert!(notes_about(&c, "billing connect_query")[0].reason.contains("ALTER"));
    assert!(notes_about(&c, "batch reserve_pool_size")[0].reason.contains("per-user"));
    assert!(notes_about(&c, "batch idle_transaction_timeout")[0].reason.contains("[proxy] idle_transaction_timeout"));
    for key in ["stats_users", "server_login_retry", "client_tls_protocols", "so_reuseport"] {
        assert_eq!(notes_about(&c, key).len(), 1, "{key}: {:?}", c.notes);
    }
    // Mapped settings are not reported, and no note says a database is served from [primary].
    for key in ["max_client_conn", "server_tls_sslmode", "max_db_connections", "orders_ro", "reporting", "reporter"] {
        assert!(notes_about(&c, key).is_empty(), "{key}: {:?}", notes_about(&c, key));
    }
    assert!(!c.notes.iter().any(|n| n.reason.contains("[primary]")), "{:?}", c.notes);
}

/// The fixture's `[databases]` and `[users]` as pgshift loads them.
fn fixture_topology(cfg: &Config) {
    assert_eq!(cfg.clusters.len(), 2, "{:?}", cfg.clusters);
    assert_eq!(cfg.clusters["10-20-0-12"].hosts, ["10.20.0.12:5432"]);
    assert_eq!(cfg.clusters["10-30-0-5-5433"].hosts, ["10.30.0.5:5433", "10.30.0.6:5433"]);
    let db = &cfg.databases;
    let names: Vec<&str> = db.keys().map(String::as_str).collect();
    assert_eq!(names, ["*", "billing", "orders", "orders_batch", "orders_ro", "reporting"]);
    assert_eq!(db["orders"], Default::default(), "same name on the default cluster: nothing to say");
    assert_eq!(db["orders_ro"].cluster.as_deref(), Some("10-20-0-12"));
    assert_eq!(db["orders_ro"].dbname.as_deref(), Some("orders"));
    assert_eq!((db["reporting"].dbname.as_deref(), db["reporting"].pool_size), (None, Some(5)));
    let batch = &db["orders_batch"];
    assert_eq!((batch.cluster.as_deref(), batch.dbname.as_deref()), (None, Some("orders")));
    assert_eq!(batch.pool_mode, Some(PoolMode::Session));
    assert_eq!(batch.server_lifetime, Some(Dur::secs(600)));
    assert_eq!(batch.max_db_connections, Some(20));
    let billing = &db["billing"];
    assert_eq!(billing.cluster.as_deref(), Some("10-30-0-5-5433"));
    assert_eq!(billing.dbname.as_deref(), Some("billing_prod"));
    assert_eq!((billing.user.as_deref(), billing.password.as_deref()), (Some("billing_svc"), None));
    assert_eq!(billing.reserve_pool_size, Some(2));
    assert_eq!(db["*"].max_db_client_connections, Some(200));
    assert_eq!(db["*"].cluster, None);
    let reporter = &cfg.users["reporter"];
    assert_eq!((reporter.pool_mode, reporter.max_user_connections), (Some(PoolMode::Session), Some(10)));
    let batch = &cfg.users["batch"];
    assert_eq!((batch.pool_size, batch.query_timeout), (Some(4), Some(Dur::secs(600))));
    assert_eq!(batch.max_user_client_connections, Some(20));
}

#[test]
fn userlist_users_are_inlined() {
    let ini = "[databases]\napp = host=db\n[users]\napp = pool_size=30\n[pgbouncer]\nauth_type = md5\n\
               auth_file = /etc/pgbouncer/userlist.txt\nauth_user = pgbouncer\n";
    let users = "\"app\" \"app-secret\"\n\"pgbouncer\" \"SCRAM-SHA-256$4096:c2FsdA==$c3RvcmVk:c2VydmVy\"\n\
                 \"legacy\" \"md5a3556571e93b0d20722ba62be61e8c2d\"\n";
    let c = convert("pgbouncer.ini", ini, Some(("userlist.txt", users))).unwrap();
    assert!(c.has_secrets);
    assert!(!c.toml.contains("auth_file"), "users inlined instead:\n{}", c.toml);
    assert!(c.problems.is_empty(), "{:?}\n{}", c.problems, c.toml);
    let cfg = Config::from_toml(&c.toml).unwrap();
    assert_eq!(cfg.auth.users.len(), 3);
    assert_eq!(cfg.auth.users[0].password.as_deref(), Some("app-secret"));
    assert_eq!(cfg.users["app"].pool_size, Some(30), "[users] pool_size is [users.app] pool_size");
    assert_eq!(cfg.auth.auth_user, "pgbouncer");
    assert!(cfg.auth.auth_query.contains("rolvaliduntil"), "PgBouncer's default auth_query");
    // md5 with SCRAM secrets: PgBouncer would use SCRAM for those users; pgshift uses it for all.
    assert_eq!(cfg.auth.kind, AuthType::ScramSha256);
    let auth = notes_about(&c, "auth_type");
    assert!(auth[0].reason.contains("legacy"), "{auth:?}");
    assert!(c.notes.iter().any(|n| n.setting == "auth_dbname"));
    assert_eq!(cfg.primary.address(), "db:5432");
}

#[test]
fn auth_user_without_its_password_does_not_validate() {
    let ini = "[databases]\napp = host=db\n[pgbouncer]\nauth_type = scram-sha-256\nauth_user = pgbouncer\n\
               auth_file = /etc/pgbouncer/userlist.txt\n";
    let c = convert("pgbouncer.ini", ini, None).unwrap();
    assert!(c.problems.iter().any(|p| p.contains("auth_user")), "{:?}", c.problems);
}

#[test]
fn zero_timeouts_that_mean_something_else() {
    let ini = "[databases]\n* = host=db port=6000\n[pgbouncer]\nauth_type = trust\nquery_wait_timeout = 0\n\
               server_lifetime = 0\nserver_check_delay = 0\nclient_login_timeout = 0\nserver_idle_timeout = 0\n\
               pool_mode = statement\n";
    let c = convert("pgbouncer.ini", ini, None).unwrap();
    assert!(c.problems.is_empty(), "{:?}", c.problems);
    let cfg = Config::from_toml(&c.toml).unwrap();
    assert_eq!(cfg.proxy.query_wait_timeout, Dur::secs(120), "pgshift's default kept");
    assert_eq!(cfg.proxy.server_lifetime, Dur::secs(3600));
    assert_eq!(cfg.proxy.server_idle_timeout, Dur::secs(0), "0 is off in both");
    assert_eq!(cfg.proxy.pool_mode, PoolMode::Transaction);
    for key in ["query_wait_timeout", "server_lifetime", "server_check_delay", "pool_mode"] {
        assert_eq!(notes_about(&c, key)[0].kind, NoteKind::NotMapped, "{key}");
    }
    assert!(notes_about(&c, "server_idle_timeout").is_empty());
    assert_eq!(cfg.proxy.client_login_timeout, Dur::secs(0), "0 is no limit in both");
    assert!(notes_about(&c, "client_login_timeout").is_empty());
    assert_eq!(cfg.primary.address(), "db:6000");
    // PgBouncer's defaults where pgshift's differ.
    assert_eq!(cfg.proxy.max_client_conn, 100);
    assert_eq!(cfg.proxy.server_connect_timeout, Dur::secs(15));
}

#[test]
fn auth_hba_file_is_mapped_with_auth_type_hba() {
    let dir = std::env::temp_dir().join(format!("pgshift-convert-hba-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let hba = dir.join("pg_hba.conf");
    std::fs::write(&hba, "host all all 127.0.0.1/32 scram-sha-256\n").unwrap();
    let ini = format!(
        "[databases]\napp = host=db\n[pgbouncer]\nauth_type = hba\nauth_hba_file = {}\nauth_user = app\n\
         auth_file = /etc/pgbouncer/userlist.txt\n",
        hba.display()
    );
    let c = convert("pgbouncer.ini", &ini, Some(("userlist.txt", "\"app\" \"pw\"\n"))).unwrap();
    let cfg = Config::from_toml(&c.toml);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(c.problems.is_empty(), "{:?}\n{}", c.problems, c.toml);
    let cfg = cfg.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cfg.auth.auth_hba_file, hba.display().to_string());
    assert_eq!(notes_about(&c, "auth_type")[0].kind, NoteKind::Different);
    // without auth_type = hba PgBouncer ignores the file, and so does the conversion
    let ini = "[databases]\napp = host=db\n[pgbouncer]\nauth_type = trust\nauth_hba_file = /etc/pg_hba.conf\n";
    let c = convert("pgbouncer.ini", ini, None).unwrap();
    assert_eq!(Config::from_toml(&c.toml).unwrap().auth.auth_hba_file, "", "{}", c.toml);
    assert_eq!(notes_about(&c, "auth_hba_file")[0].kind, NoteKind::NotMapped);
}

#[test]
fn listen_addresses() {
    let listen = |lines: &str| {
        let ini = format!("[databases]\napp = host=db\n[pgbouncer]\nauth_type = trust\n{lines}");
        let c = convert("pgbouncer.ini", &ini, None).unwrap();
        (Config::from_toml(&c.toml).unwrap().proxy.listen, notes_about(&c, "listen_addr").len())
    };
    assert_eq!(listen(""), ("127.0.0.1:6432".into(), 1), "unix socket only in PgBouncer");
    assert_eq!(listen("listen_addr = *\nlisten_port = 7432\n"), ("0.0.0.0:7432".into(), 0));
    assert_eq!(listen("listen_addr = 10.0.0.1, 10.0.0.2\n"), ("10.0.0.1:6432".into(), 1));
    assert_eq!(listen("listen_addr = ::\n"), ("[::]:6432".into(), 0));
    assert_eq!(listen("listen_addr = localhost\n"), ("127.0.0.1:6432".into(), 0));
}

#[test]
fn unix_socket_settings() {
    let convert_with = |lines: &str| {
        let ini = format!("[databases]\napp = host=db\n[pgbouncer]\nauth_type = trust\nlisten_addr = *\n{lines}");
        let c = convert("pgbouncer.ini", &ini, None).unwrap();
        let p = Config::from_toml(&c.toml).unwrap().proxy;
        (p.unix_socket_dir, p.unix_socket_mode, c.notes.iter().filter(|n| n.setting.contains("unix_socket")).count())
    };
    // PgBouncer's default directory is /tmp; pgshift's is none, so the default is written out
    assert_eq!(convert_with(""), ("/tmp".into(), "0777".into(), 0));
    assert_eq!(
        convert_with("unix_socket_dir = /run/pgbouncer\nunix_socket_mode = 0770\n"),
        ("/run/pgbouncer".into(), "0770".into(), 0)
    );
    assert_eq!(convert_with("unix_socket_dir =\n"), (String::new(), "0777".into(), 0), "off stays off");
    assert_eq!(convert_with("unix_socket_dir = @pgbouncer\n"), ("/tmp".into(), "0777".into(), 1), "abstract namespace");
    assert_eq!(convert_with("unix_socket_mode = 999\n"), ("/tmp".into(), "0777".into(), 1));
    assert_eq!(convert_with("unix_socket_group = pg\n").2, 1);
}

#[test]
fn secrets_stay_out_of_notes() {
    let ini = "[databases]\napp = host=db user=svc password=hunter2\nother = host=elsewhere password='x y'\n\
               [pgbouncer]\nauth_type = trust\n";
    let c = convert("pgbouncer.ini", ini, None).unwrap();
    let all: String = c.notes.iter().map(|n| format!("{} {}\n", n.setting, n.reason)).collect();
    assert!(!all.contains("hunter2") && !all.contains("x y"), "{all}");
    assert!(all.contains("password=<redacted>"), "{all}");
    // A forced user's password is carried over: the output is a secret file.
    assert!(c.has_secrets);
    assert!(c.toml.contains("It holds passwords"), "{}", c.toml);
    let cfg = Config::from_toml(&c.toml).unwrap();
    assert_eq!(cfg.databases["app"].user.as_deref(), Some("svc"));
    assert_eq!(cfg.databases["app"].password.as_deref(), Some("hunter2"));
    assert_eq!(cfg.databases["other"].password, None, "password= without user= is not used");
    assert!(!c.toml.contains("x y"), "{}", c.toml);
}

#[test]
fn tls_modes() {
    let ini = "[databases]\napp = host=db\n[pgbouncer]\nauth_type = trust\nclient_tls_sslmode = verify-full\n\
               client_tls_cert_file = a.crt\nclient_tls_key_file = a.key\nserver_tls_sslmode = allow\n\
               server_tls_cert_file = c.crt\n";
    let c = convert("pgbouncer.ini", ini, None).unwrap();
    let cfg = Config::from_toml(&c.toml).unwrap();
    assert_eq!(cfg.tls.mode, TlsMode::Require);
    assert_eq!(cfg.tls.server_mode, ServerTlsMode::Prefer);
    assert_eq!(notes_about(&c, "client_tls_sslmode")[0].kind, NoteKind::Different);
    assert_eq!(notes_about(&c, "server_tls_sslmode")[0].kind, NoteKind::Different);
    assert_eq!(notes_about(&c, "server_tls_cert_file")[0].kind, NoteKind::NotMapped);
}

#[test]
fn unreadable_input_is_an_error() {
    assert!(convert("pgbouncer.ini", "[pgbouncer]\nno equals sign\n", None)
        .unwrap_err()
        .contains("pgbouncer.ini: line 2"));
    assert!(convert("x.ini", "[pgbouncer]\n", Some(("userlist.txt", "app secret\n"))).is_err());
}

/// Converts `[databases]` lines (auth trust, so no users are needed) and loads the result.
fn convert_databases(lines: &str) -> (Conversion, Config) {
    let ini = format!("[databases]\n{lines}[pgbouncer]\nauth_type = trust\nlisten_addr = *\n");
    let c = convert("pgbouncer.ini", &ini, None).unwrap();
    assert!(c.problems.is_empty(), "{:?}\n{}", c.problems, c.toml);
    let cfg = Config::from_toml(&c.toml).unwrap();
    (c, cfg)
}

#[test]
fn the_host_set_most_entries_use_is_the_default_cluster() {
    let (_, cfg) = convert_databases(
        "a = host=first.example.com\nb = host=db1,db2 port=5433,5434\nc = host=db2 port=5434\n\
         d = host=db2,db1 port=5434,5433 dbname=x\n",
    );
    // b and d name the same two servers (in another order): most used, so [primary] + [[replicas]].
    assert_eq!(cfg.primary.address(), "db1:5433");
    let replicas: Vec<String> = cfg.replicas.iter().map(|r| r.address()).collect();
    assert_eq!(replicas, ["db2:5434"]);
    assert_eq!(cfg.clusters["first"].hosts, ["first.example.com:5432"]);
    assert_eq!(cfg.clusters["db2-5434"].hosts, ["db2:5434"]);
    let db = &cfg.databases;
    assert_eq!((db["b"].cluster.as_deref(), db["d"].cluster.as_deref()), (None, None));
    assert_eq!(db["a"].cluster.as_deref(), Some("first"));
    assert_eq!(db["c"].cluster.as_deref(), Some("db2-5434"));
    // On a tie the first entry's hosts are the default cluster.
    let (_, cfg) = convert_databases("a = host=10.0.0.1\nb = host=10.0.0.2\n");
    assert_eq!(cfg.primary.address(), "10.0.0.1:5432");
    assert_eq!(cfg.databases["b"].cluster.as_deref(), Some("10-0-0-2"));
}

#[test]
fn cluster_names_are_readable_and_unique() {
    let (_, cfg) =
        convert_databases("main = host=m\na = host=db.east\nb = host=db.west\nc = host=db.north\nd = host=::1\n");
    let names: Vec<&str> = cfg.clusters.keys().map(String::as_str).collect();
    assert_eq!(names, ["1", "db", "db-2", "db-3"]);
    assert_eq!(cfg.clusters["1"].hosts, ["[::1]:5432"]);
    assert_eq!(cfg.cluster_hosts("1").unwrap()[0].host, "::1");
}

#[test]
fn entries_without_a_tcp_host_connect_to_localhost() {
    let (c, cfg) = convert_databases("app = dbname=app_prod\nlocal = host=/var/run/postgresql port=6000\n");
    assert_eq!(cfg.primary.address(), "127.0.0.1:5432");
    assert_eq!(cfg.clusters["127-0-0-1-6000"].hosts, ["127.0.0.1:6000"]);
    for name in ["[databases] app =", "[databases] local ="] {
        let n = notes_about(&c, name);
        assert_eq!(n[0].kind, NoteKind::Different, "{name}: {:?}", c.notes);
        assert!(n[0].reason.contains("127.0.0.1"));
    }
    assert_eq!(cfg.databases["app"].dbname.as_deref(), Some("app_prod"));
}

#[test]
fn entries_that_cannot_be_mapped_are_left_out_with_a_reason() {
    let (c, cfg) = convert_databases(
        "app = host=db dbname=app\nbad = host=db port=none\nmany = host=a,b,c port=1,2\n\
         pgbouncer = host=db\nquoted = host=db 'open\n\"my db\" = host=db dbname=app\n",
    );
    assert_eq!(cfg.databases.keys().collect::<Vec<_>>(), ["app", "my db"]);
    assert!(c.toml.contains("[databases.\"my db\"]"), "{}", c.toml);
    for (name, why) in [("bad", "port"), ("many", "number of ports"), ("pgbouncer", "admin console"), ("quoted", "")] {
        let n = notes_about(&c, &format!("[databases] {name}"));
        assert!(n.iter().any(|n| n.kind == NoteKind::NotMapped && n.reason.contains(why)), "{name}: {n:?}");
    }
}

#[test]
fn per_database_settings_and_the_star_entry() {
    let (c, cfg) = convert_databases(
        "app = host=db pool_size=7 min_pool_size=2 reserve_pool_size=3 pool_mode=statement \
         server_lifetime=0 max_db_client_connections=9 auth_user=x timezone=UTC load_balance_hosts=disable\n\
         * = host=db dbname=fallback\n",
    );
    let app = &cfg.databases["app"];
    assert_eq!((app.pool_size, app.min_pool_size, app.reserve_pool_size), (Some(7), Some(2), Some(3)));
    assert_eq!(app.max_db_client_connections, Some(9));
    assert_eq!((app.pool_mode, app.server_lifetime), (None, None), "statement mode and lifetime 0 are noted");
    for key in ["app pool_mode", "app server_lifetime", "app auth_user", "app timezone", "app load_balance_hosts"] {
        assert_eq!(notes_about(&c, key)[0].kind, NoteKind::NotMapped, "{key}");
    }
    assert_eq!(cfg.databases["*"].dbname, None);
    assert!(notes_about(&c, "* dbname")[0].reason.contains("each name as itself"));
}

#[test]
fn users_map_onto_users_tables() {
    let ini = "[databases]\napp = host=db\n[users]\nbatch = pool_mode=session pool_size=3 query_timeout=0 \
               max_user_connections=4 max_user_client_connections=5 client_idle_timeout=9 x=1\n\
               odd = pool_mode=statement\n[pgbouncer]\nauth_type = trust\nmax_user_connections = 50\n";
    let c = convert("pgbouncer.ini", ini, None).unwrap();
    assert!(c.problems.is_empty(), "{:?}", c.problems);
    let cfg = Config::from_toml(&c.toml).unwrap();
    let b = &cfg.users["batch"];
    assert_eq!((b.pool_mode, b.pool_size), (Some(PoolMode::Session), Some(3)));
    assert_eq!(b.query_timeout, Some(Dur::secs(0)), "0 is off in both");
    assert_eq!((b.max_user_connections, b.max_user_client_connections), (Some(4), Some(5)));
    assert_eq!(cfg.proxy.max_user_connections, 50);
    assert!(!cfg.users.contains_key("odd"), "nothing mapped: no table");
    for key in ["batch client_idle_timeout", "batch x=1", "odd pool_mode"] {
        assert_eq!(notes_about(&c, key)[0].kind, NoteKind::NotMapped, "{key}");
    }
}

#[test]
fn no_databases_at_all_is_noted() {
    let c = convert("pgbouncer.ini", "[pgbouncer]\nauth_type = trust\n", None).unwrap();
    assert!(c.notes.iter().any(|n| n.setting == "[primary]"), "{:?}", c.notes);
}

#[test]
fn an_output_with_a_forced_password_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("pgshift-convert-mode-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("proxy.toml");
    std::fs::write(&out, "old").unwrap();
    std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o644)).unwrap();
    let c = convert("pgbouncer.ini", "[databases]\napp = host=db user=svc password=pw\n", None).unwrap();
    let args =
        crate::cli::ConvertArgs { ini: dir.join("x.ini"), userlist: None, output: Some(out.clone()), force: true };
    let written = write_output(&args, &c);
    let mode = std::fs::metadata(&out).unwrap().permissions().mode() & 0o777;
    let text = std::fs::read_to_string(&out).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    written.unwrap();
    assert_eq!(mode, 0o600, "an overwritten file is narrowed too");
    assert!(text.contains("password = \"pw\""), "{text}");
}
