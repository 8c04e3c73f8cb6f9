//! Tests of loading, overriding and validating proxy.toml.

use super::*;

const MINIMAL: &str = r#"
[auth]
[[auth.users]]
name = "app"
password = "app"
"#;

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

#[test]
fn defaults_match_pgbouncer() {
    let c = Config::from_toml(MINIMAL).unwrap();
    assert_eq!(c.proxy.default_pool_size, 20);
    assert_eq!(c.proxy.max_client_conn, 10_000);
    assert_eq!(c.proxy.query_wait_timeout, Dur::secs(120));
    assert_eq!(c.proxy.pool_mode, PoolMode::Transaction);
    assert_eq!(c.auth.kind, AuthType::ScramSha256);
}

#[test]
fn example_file_is_valid() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/proxy.toml")).unwrap();
    Config::from_toml(&text).unwrap();
}

#[test]
fn environment_overrides_file() {
    let vars = env(&[
        ("PGSHIFT_PROXY_DEFAULT_POOL_SIZE", "40"),
        ("PGSHIFT_PRIMARY_URL", "postgres://db.internal:6543"),
        ("PGSHIFT_ADMIN_TOKEN", "1234"),
        ("PGSHIFT_ROUTING_READ_WRITE_SPLIT", "off"),
        ("PGSHIFT_TEST_PRIMARY_PORT", "99"), // not a config section: ignored
    ]);
    let c = Config::from_toml_with_env(MINIMAL, vars).unwrap();
    assert_eq!(c.proxy.default_pool_size, 40);
    assert_eq!(c.primary, BackendConfig { host: "db.internal".into(), port: 6543 });
    assert_eq!(c.admin.token, "1234");
    assert!(!c.routing.read_write_split);
}

#[test]
fn every_problem_is_listed() {
    let text = r#"
[proxy]
listen = "nowhere"
default_pool_size = "many"
bogus = 1
[auth]
type = "scram-sha-256"
[[auth.users]]
name = "app"
[primary]
port = 0
hots = "x"
"#;
    let err = Config::from_toml_with_env(text, env(&[("PGSHIFT_PROXY_NOPE", "1")])).unwrap_err();
    let all = err.0.join("\n");
    assert!(all.contains("unknown key `proxy.bogus`"), "{all}");
    assert!(all.contains("unknown key `primary.hots`"), "{all}");
    assert!(all.contains("[proxy]"), "{all}");
    assert!(all.contains("PGSHIFT_PROXY_NOPE"), "{all}");
    assert!(err.0.len() >= 4, "{all}");
}

#[test]
fn semantic_problems_are_listed_together() {
    let text = r#"
[proxy]
listen = "nowhere"
min_pool_size = 50
[auth]
[[auth.users]]
name = "app"
[admin]
listen = "0.0.0.0:6480"
"#;
    let err = Config::from_toml(text).unwrap_err();
    let all = err.0.join("\n");
    assert!(all.contains("listen"), "{all}");
    assert!(all.contains("min_pool_size"), "{all}");
    assert!(all.contains("no password"), "{all}");
    assert!(all.contains("token is required"), "{all}");
}

#[test]
fn redaction_hides_secrets() {
    let mut c = Config::from_toml(MINIMAL).unwrap();
    c.admin.token = "tok-secret".into();
    let out = c.redacted_toml();
    assert!(!out.contains("tok-secret"));
    assert!(!out.contains("password = \"app\""));
    assert!(out.contains("<redacted>"));
}

#[test]
fn replicas_from_environment_replace_the_file() {
    let text = format!("{MINIMAL}\n[[replicas]]\nhost = \"old\"\nport = 5433\n");
    let vars = env(&[("PGSHIFT_REPLICAS", "r1:5433, r2 ,[::1]:6000,postgres://u:secret@r3:7000/app")]);
    let c = Config::from_toml_with_env(&text, vars).unwrap();
    let got: Vec<String> = c.replicas.iter().map(BackendConfig::address).collect();
    assert_eq!(got, ["r1:5433", "r2:5432", "::1:6000", "r3:7000"]);

    let c = Config::from_toml_with_env(&text, env(&[("PGSHIFT_REPLICAS", "")])).unwrap();
    assert!(c.replicas.is_empty(), "an empty PGSHIFT_REPLICAS means no replicas");
}

#[test]
fn bad_replica_entries_are_listed_without_their_text() {
    let vars = env(&[("PGSHIFT_REPLICAS", "ok:5433,postgres://u:hunter2@:99,::1")]);
    let err = Config::from_toml_with_env(MINIMAL, vars).unwrap_err();
    let all = err.0.join("\n");
    assert!(all.contains("PGSHIFT_REPLICAS: entry 2"), "{all}");
    assert!(all.contains("PGSHIFT_REPLICAS: entry 3"), "{all}");
    assert_eq!(err.0.len(), 2, "{all}");
    assert!(!all.contains("hunter2"), "{all}");
}

#[test]
fn migration_target_from_environment() {
    let vars = env(&[("PGSHIFT_MIGRATION_TARGET_URL", "postgres://new-db:5442/app")]);
    let c = Config::from_toml_with_env(MINIMAL, vars).unwrap();
    assert_eq!(c.migration.unwrap().target, BackendConfig { host: "new-db".into(), port: 5442 });
}

#[test]
fn secrets_from_files_named_by_the_environment() {
    let dir = std::env::temp_dir().join(format!("pgshift-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let token = dir.join("admin_token");
    std::fs::write(&token, "s3cret-token\nignored second line\n").unwrap();
    let vars = env(&[
        ("PGSHIFT_ADMIN_TOKEN_FILE", token.to_str().unwrap()),
        ("PGSHIFT_ADMIN_LISTEN", "0.0.0.0:6480"), // beyond loopback: the token is required
    ]);
    let c = Config::from_toml_with_env(MINIMAL, vars).unwrap();
    assert_eq!(c.admin.token, "s3cret-token");

    // A real key ending in _file is still that key.
    let c = Config::from_toml_with_env(MINIMAL, env(&[("PGSHIFT_AUTH_AUTH_FILE", "/etc/userlist.txt")])).unwrap();
    assert_eq!(c.auth.auth_file, "/etc/userlist.txt");

    let missing = dir.join("nope");
    let vars = env(&[("PGSHIFT_ADMIN_TOKEN_FILE", missing.to_str().unwrap()), ("PGSHIFT_ADMIN_NOPE_FILE", "/x")]);
    let err = Config::from_toml_with_env(MINIMAL, vars).unwrap_err();
    let all = err.0.join("\n");
    assert!(all.contains("PGSHIFT_ADMIN_TOKEN_FILE: cannot read"), "{all}");
    assert!(all.contains("PGSHIFT_ADMIN_NOPE_FILE: [admin] has no key \"nope_file\""), "{all}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn every_mistake_of_a_section_is_listed_in_plain_words() {
    let text = "[proxy]\npool_mode = \"transacton\"\ndefault_pool_size = -5\ndefualt_pool_size = 3\n\
                [routing]\nread_write_split = 3\n[databases.app]\npool_size = -1\npool_mod = \"session\"\n\
                [[replicas]]\nport = \"x\"\n";
    let e = super::Config::from_toml(text).unwrap_err().0;
    let want = [
        "[proxy] pool_mode = \"transacton\": must be one of transaction, session (did you mean \"transaction\"?)",
        "[proxy] default_pool_size = -5: must be a whole number, 0 or more",
        "unknown key `proxy.defualt_pool_size` (did you mean `default_pool_size`?)",
        "[routing] read_write_split = 3: must be true or false",
        "[databases.app] pool_size = -1: must be a whole number, 0 or more",
        "unknown key `databases.app.pool_mod` (did you mean `pool_mode`?)",
        "[[replicas]] #1 port = \"x\": must be a whole number from 0 to 65535",
    ];
    for w in want {
        assert!(e.iter().any(|p| p == w), "missing {w:?} in {e:#?}");
    }
}

#[test]
fn unix_socket_settings() {
    let c = Config::from_toml(MINIMAL).unwrap();
    assert_eq!(c.proxy.unix_socket_path(6432), None, "off by default");
    assert_eq!(c.proxy.unix_socket_mode_bits(), Some(0o777));
    let vars = env(&[("PGSHIFT_PROXY_UNIX_SOCKET_DIR", "/run/pgshift"), ("PGSHIFT_PROXY_UNIX_SOCKET_MODE", "0770")]);
    let c = Config::from_toml_with_env(MINIMAL, vars).unwrap();
    assert_eq!(c.proxy.unix_socket_path(6432), Some("/run/pgshift/.s.PGSQL.6432".into()));
    assert_eq!(c.proxy.unix_socket_mode_bits(), Some(0o770));
    let bad = format!("[proxy]\nunix_socket_mode = \"0778\"\nunix_socket_dir = \"/{}\"\n{MINIMAL}", "d".repeat(100));
    let all = Config::from_toml(&bad).unwrap_err().0.join("\n");
    assert!(all.contains("unix_socket_mode = \"0778\" is not an octal file mode"), "{all}");
    assert!(all.contains("unix_socket_dir") && all.contains("too long"), "{all}");
    // An 88-byte socket path fits, but not the 105-byte name an upgrade binds beside it.
    let near = format!("[proxy]\nunix_socket_dir = \"/{}\"\n{MINIMAL}", "d".repeat(73));
    let c = Config::from_toml(&near);
    assert!(c.is_err_and(|e| e.0.join("\n").contains("binary upgrades bind beside it")));
    let fits = format!("[proxy]\nunix_socket_dir = \"/{}\"\n{MINIMAL}", "d".repeat(69));
    assert!(Config::from_toml(&fits).is_ok(), "an 84-byte socket path fits");
}

#[test]
fn fleet_section_and_its_environment_override() {
    let text = format!(
        "{MINIMAL}\n[fleet]\nid = 1\nstore = \"postgres://ctl:pw@/app\"\n[[fleet.peers]]\nid = 2\naddress = \"10.0.0.12:6432\"\n"
    );
    let c = Config::from_toml_with_env(&text, env(&[("PGSHIFT_FLEET_ID", "3")])).unwrap();
    assert_eq!(c.fleet.id, 3);
    assert_eq!(c.fleet.peer(2), Some("10.0.0.12:6432"));
    assert!(!Config::from_toml(MINIMAL).unwrap().fleet.enabled(), "no [fleet]: off");
    let err = Config::from_toml_with_env(&text, env(&[("PGSHIFT_FLEET_ID", "2")])).unwrap_err();
    assert!(err.0.iter().any(|p| p.contains("own [fleet] id")), "{:?}", err.0);
    let bad = format!("{MINIMAL}\n[fleet]\nid = 1\nbogus = 1\n[[fleet.peers]]\nid = 2\naddress = \"x\"\n");
    let err = Config::from_toml(&bad).unwrap_err();
    assert!(err.0.iter().any(|p| p.contains("fleet.bogus")), "{:?}", err.0);
    let err = Config::from_toml(&bad.replace("bogus = 1\n", "")).unwrap_err();
    assert!(err.0.iter().any(|p| p.contains("not host:port")), "{:?}", err.0);
}

/// The control table belongs to the store's role: a fleet must name one, and not a role clients
/// log in as ([[auth.users]]) or run as (a database's forced user).
#[test]
fn a_fleet_store_needs_a_role_of_its_own() {
    let fleet = |store: &str| format!("{MINIMAL}\n[fleet]\nid = 1\nstore = \"{store}\"\n");
    let problems = |text: String| Config::from_toml(&text).err().map(|e| e.0).unwrap_or_default();
    let none = problems(fleet(""));
    assert!(none.iter().any(|p| p.contains("must name a role of its own")), "{none:?}");
    let app = problems(fleet("postgres://app:app@db/app"));
    assert!(app.iter().any(|p| p.contains("logs in as \"app\"")), "{app:?}");
    let forced = problems(format!("{}\n[databases.x]\nuser = \"ctl\"\n", fleet("postgres://ctl:pw@/app")));
    assert!(forced.iter().any(|p| p.contains("logs in as \"ctl\"")), "{forced:?}");
    assert!(problems(fleet("postgres://ctl:pw@/app")).is_empty());
    assert!(problems(MINIMAL.to_string()).is_empty(), "no fleet, no store needed");
}
