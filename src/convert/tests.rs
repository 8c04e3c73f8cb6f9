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
    assert!(c.problems.is_empty(), "{:?}", c.problems);
    assert!(!c.has_secrets);

    let cfg = Config::from_toml(&c.toml).unwrap();
    let p = &cfg.proxy;
    assert_eq!(p.listen, "0.0.0.0:6432");
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

    // What could not be mapped is reported with a reason.
    assert_eq!(notes_about(&c, "logfile")[0].kind, NoteKind::NotMapped);
    assert!(notes_about(&c, "orders_ro")[0].reason.contains("[[replicas]]"));
    assert!(notes_about(&c, "reporting pool_size")[0].reason.contains("per user"));
    assert!(notes_about(&c, "reporter pool_mode")[0].origin == "pgbouncer.ini:11");
    for key in ["stats_users", "max_db_connections", "server_login_retry", "client_tls_protocols", "so_reuseport"] {
        assert_eq!(notes_about(&c, key).len(), 1, "{key}: {:?}", c.notes);
    }
    // Mapped settings are not reported.
    assert!(notes_about(&c, "max_client_conn").is_empty());
    assert!(notes_about(&c, "server_tls_sslmode").is_empty());
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
    assert_eq!(cfg.auth.users[0].pool_size, Some(30));
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
fn secrets_stay_out_of_notes() {
    let ini = "[databases]\napp = host=db user=svc password=hunter2\nother = host=elsewhere password='x y'\n\
               [pgbouncer]\nauth_type = trust\n";
    let c = convert("pgbouncer.ini", ini, None).unwrap();
    let all: String = c.notes.iter().map(|n| format!("{} {}\n", n.setting, n.reason)).collect();
    assert!(!all.contains("hunter2") && !all.contains("x y"), "{all}");
    assert!(!c.toml.contains("hunter2"), "{}", c.toml);
    assert!(all.contains("password=<redacted>"), "{all}");
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
