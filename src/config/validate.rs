//! Finds every problem in a configuration: unknown keys, wrong types (per section), bad values.

use super::{AuthType, BackendConfig, ClusterConfig, Config, DatabaseConfig, UserConfig, UserSettings};
use serde::de::DeserializeOwned;
use toml::{Table, Value};

/// A tree holding every key the config knows, including one element of each array of tables.
fn schema() -> Table {
    let mut c = Config::default();
    c.auth.users = vec![UserConfig {
        name: "u".into(),
        password: Some("p".into()),
        password_file: Some("f".into()),
        pool_size: Some(1),
    }];
    c.replicas = vec![BackendConfig::default()];
    c.migration =
        Some(crate::config::MigrationConfig { target_replicas: vec![BackendConfig::default()], ..Default::default() });
    c.backup = Some(Default::default());
    c.fleet.peers = vec![super::FleetPeer::default()];
    // Named tables: the entry "*" stands for every name (see `walk`).
    c.clusters.insert("*".into(), ClusterConfig { hosts: vec!["h".into()] });
    c.databases.insert(
        "*".into(),
        DatabaseConfig {
            cluster: Some("c".into()),
            dbname: Some("d".into()),
            user: Some("u".into()),
            password: Some("p".into()),
            pool_size: Some(Default::default()),
            min_pool_size: Some(Default::default()),
            reserve_pool_size: Some(Default::default()),
            pool_mode: Some(Default::default()),
            server_lifetime: Some(Default::default()),
            query_timeout: Some(Default::default()),
            max_db_connections: Some(Default::default()),
            max_db_client_connections: Some(Default::default()),
        },
    );
    c.users.insert(
        "*".into(),
        UserSettings {
            pool_mode: Some(Default::default()),
            pool_size: Some(Default::default()),
            query_timeout: Some(Default::default()),
            max_user_connections: Some(Default::default()),
            max_user_client_connections: Some(Default::default()),
        },
    );
    Table::try_from(&c).unwrap_or_default()
}

/// Sections whose keys are names chosen by the user, each entry checked against one schema.
const NAMED: &[&str] = &["clusters", "databases", "users"];

/// Notes every key of `tree` that the schema does not have, with its full path.
pub fn unknown_keys(tree: &Table, problems: &mut Vec<String>) {
    walk(tree, &schema(), "", problems);
}

fn walk(tree: &Table, schema: &Table, path: &str, problems: &mut Vec<String>) {
    for (k, v) in tree {
        let here = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
        let Some(known) = schema.get(k) else {
            let hint = super::words::did_you_mean(k, schema.keys().map(String::as_str).filter(|s| *s != "*"))
                .map(|m| format!(" (did you mean `{m}`?)"))
                .unwrap_or_default();
            problems.push(format!("unknown key `{here}`{hint}"));
            continue;
        };
        match (v, known) {
            (Value::Table(t), Value::Table(s)) if path.is_empty() && NAMED.contains(&k.as_str()) => {
                let entry = s.get("*").and_then(Value::as_table).cloned().unwrap_or_default();
                for (name, item) in t {
                    match item {
                        Value::Table(e) => walk(e, &entry, &format!("{here}.{name}"), problems),
                        _ => problems.push(format!("[{here}] {name} must be a table ([{here}.{name}])")),
                    }
                }
            }
            (Value::Table(t), Value::Table(s)) => walk(t, s, &here, problems),
            (Value::Array(items), Value::Array(s)) => {
                if let Some(Value::Table(s)) = s.first() {
                    for (i, item) in items.iter().enumerate() {
                        if let Value::Table(t) = item {
                            walk(t, s, &format!("{here}[{i}]"), problems);
                        }
                    }
                }
            }
            _ => {}
        }
    }
}

/// Deserializes section by section so that one bad value does not hide the others.
pub fn typed(tree: Table, problems: &mut Vec<String>) -> Option<Config> {
    let before = problems.len();
    let mut c = Config::default();
    for (k, v) in tree {
        match k.as_str() {
            "proxy" => section(&k, v, problems, &mut c.proxy),
            "auth" => section(&k, v, problems, &mut c.auth),
            "tls" => section(&k, v, problems, &mut c.tls),
            "primary" => section(&k, v, problems, &mut c.primary),
            "replicas" => list(&k, v, problems, &mut c.replicas),
            "routing" => section(&k, v, problems, &mut c.routing),
            "admin" => section(&k, v, problems, &mut c.admin),
            "log" => section(&k, v, problems, &mut c.log),
            "fleet" => section(&k, v, problems, &mut c.fleet),
            "clusters" => named(&k, v, problems, &mut c.clusters),
            "databases" => named(&k, v, problems, &mut c.databases),
            "users" => named(&k, v, problems, &mut c.users),
            "migration" => {
                let mut m = Default::default();
                section(&k, v, problems, &mut m);
                c.migration = Some(m);
            }
            "backup" => {
                let mut b = Default::default();
                section(&k, v, problems, &mut b);
                c.backup = Some(b);
            }
            _ => {} // reported by unknown_keys
        }
    }
    (problems.len() == before).then_some(c)
}

fn section<T: DeserializeOwned>(name: &str, v: Value, problems: &mut Vec<String>, out: &mut T) {
    if let Some(t) = checked(&format!("[{name}]"), v, problems) {
        *out = t;
    }
}

/// `v` as a `T`, or a problem line for each key whose value does not fit (not only the first).
fn checked<T: DeserializeOwned>(at: &str, v: Value, problems: &mut Vec<String>) -> Option<T> {
    let e = match v.clone().try_into::<T>() {
        Ok(t) => return Some(t),
        Err(e) => e,
    };
    let before = problems.len();
    if let Value::Table(t) = v {
        // Every section's struct takes defaults for absent keys, so each key can be tried alone.
        for (k, item) in t {
            let shown = item.to_string();
            let mut one = Table::new();
            one.insert(k.clone(), item);
            if let Err(e) = Value::Table(one).try_into::<T>() {
                problems.push(format!("{at} {k} = {shown}: {}", super::words::plain(&e.to_string())));
            }
        }
    }
    if problems.len() == before {
        problems.push(format!("{at}: {}", super::words::plain(&e.to_string())));
    }
    None
}

/// `[clusters]`, `[databases]`, `[users]`: each entry checked on its own, key by key.
fn named<E: DeserializeOwned>(
    name: &str,
    v: Value,
    problems: &mut Vec<String>,
    out: &mut std::collections::BTreeMap<String, E>,
) {
    let Value::Table(t) = v else {
        problems.push(format!("[{name}] must be a table of entries ([{name}.NAME])"));
        return;
    };
    for (entry, item) in t {
        if let Some(e) = checked(&format!("[{name}.{entry}]"), item, problems) {
            out.insert(entry, e);
        }
    }
}

/// `[[replicas]]`: each element checked on its own, key by key.
fn list<E: DeserializeOwned>(name: &str, v: Value, problems: &mut Vec<String>, out: &mut Vec<E>) {
    let Value::Array(items) = v else {
        problems.push(format!("{name} must be an array of tables ([[{name}]])"));
        return;
    };
    for (i, item) in items.into_iter().enumerate() {
        if let Some(e) = checked(&format!("[[{name}]] #{}", i + 1), item, problems) {
            out.push(e);
        }
    }
}

impl Config {
    /// `unix_socket_mode` is octal within 0777, and the socket's path fits a Unix socket address.
    fn validate_unix_socket(&self, problems: &mut Vec<String>) {
        let p = &self.proxy;
        if p.unix_socket_mode_bits().is_none() {
            problems.push(format!(
                "[proxy] unix_socket_mode = {:?} is not an octal file mode like \"0777\" or \"0770\"",
                p.unix_socket_mode
            ));
        }
        // Port 0 (any free port) is known only once bound: count its longest spelling.
        let port = p.listen.parse::<std::net::SocketAddr>().map_or(0, |a| a.port());
        let port = if port == 0 { u16::MAX } else { port };
        // 108 bytes for sun_path on Linux, its terminating NUL included (104 on the BSDs). A
        // binary upgrade binds beside the socket under a name 17 bytes longer (`.NAME.up-` and 12
        // hex digits, client::socket_file), which must fit too.
        const UPGRADE_NAME_EXTRA: usize = 17;
        if let Some(path) = p.unix_socket_path(port) {
            if path.as_os_str().len() + UPGRADE_NAME_EXTRA > 103 {
                problems.push(format!(
                    "[proxy] unix_socket_dir = {:?} is too long: the socket path {} must be at most {} bytes \
                     (binary upgrades bind beside it under a name {UPGRADE_NAME_EXTRA} bytes longer)",
                    p.unix_socket_dir,
                    path.display(),
                    103 - UPGRADE_NAME_EXTRA
                ));
            }
        }
    }

    /// Semantic checks; appends a readable line per problem.
    pub fn validate(&self, problems: &mut Vec<String>) {
        let p = &self.proxy;
        if p.listen.parse::<std::net::SocketAddr>().is_err() {
            problems.push(format!("[proxy] listen = {:?} is not an address like 127.0.0.1:6432", p.listen));
        }
        self.validate_unix_socket(problems);
        if p.default_pool_size == 0 {
            problems.push("[proxy] default_pool_size must be at least 1".into());
        }
        if p.min_pool_size > p.default_pool_size {
            problems.push("[proxy] min_pool_size must not exceed default_pool_size".into());
        }
        if p.max_client_conn == 0 {
            problems.push("[proxy] max_client_conn must be at least 1".into());
        }
        if p.max_pending_logins == 0 {
            problems.push("[proxy] max_pending_logins must be at least 1".into());
        }
        if p.query_wait_timeout.0.is_zero() {
            problems.push("[proxy] query_wait_timeout must be above 0".into());
        }
        if p.server_connect_timeout.0.is_zero() {
            problems.push("[proxy] server_connect_timeout must be above 0".into());
        }
        self.validate_auth(problems);
        let forced = self.databases.values().filter_map(|d| d.user.as_deref());
        let client_roles: Vec<&str> = self.auth.users.iter().map(|u| u.name.as_str()).chain(forced).collect();
        self.fleet.validate(p.max_client_conn, &client_roles, problems);
        self.validate_topology(problems);
        validate_backend("primary", &self.primary, problems);
        for (i, r) in self.replicas.iter().enumerate() {
            validate_backend(&format!("replicas[{i}]"), r, problems);
        }
        if let Some(m) = &self.migration {
            validate_backend("migration.target", &m.target, problems);
            for (i, r) in m.target_replicas.iter().enumerate() {
                validate_backend(&format!("migration.target_replicas[{i}]"), r, problems);
            }
            if m.target == self.primary {
                problems.push("[migration] target is the same server as [primary]".into());
            }
            if m.verify_sample_percent == 0 || m.verify_sample_percent > 100 {
                problems.push("[migration] verify_sample_percent must be between 1 and 100".into());
            }
            self.validate_migration_sync(m, problems);
            if !(1..=100).contains(&m.ramp_start_percent) || !(1..=100).contains(&m.ramp_step_percent) {
                problems.push("[migration] ramp_start_percent and ramp_step_percent must be between 1 and 100".into());
            }
            if !(0.0..1.0).contains(&m.ramp_max_error_ratio)
                || m.ramp_max_latency_factor < 1.0
                || m.ramp_interval.0.is_zero()
            {
                problems.push(
                    "[migration] ramp_max_error_ratio must be in [0, 1), ramp_max_latency_factor at least 1, ramp_interval above 0".into(),
                );
            }
        }
        if let Some(b) = &self.backup {
            b.validate(self, problems);
        }
        let a = &self.admin;
        if a.max_connections == 0 {
            problems.push("[admin] max_connections must be at least 1".into());
        }
        if !a.listen.is_empty() && !a.listen.starts_with("unix:") {
            match a.listen.parse::<std::net::SocketAddr>() {
                Err(_) => problems.push(format!("[admin] listen = {:?} is not an address or unix:/path", a.listen)),
                Ok(addr) if !addr.ip().is_loopback() && a.token.is_empty() => {
                    problems.push("[admin] token is required when listen is not a loopback address".into())
                }
                Ok(_) => {}
            }
        }
    }

    fn validate_migration_sync(&self, m: &super::MigrationConfig, problems: &mut Vec<String>) {
        if m.admin_user.is_empty() {
            if m.sync == super::SyncChoice::Logical {
                problems.push("[migration] sync = \"logical\" needs admin_user: the role that creates publications and subscriptions".into());
            }
            return;
        }
        match self.auth.users.iter().find(|u| u.name == m.admin_user) {
            None => problems.push(format!("[migration] admin_user {:?} is not one of [[auth.users]]", m.admin_user)),
            Some(u) if u.password.as_deref().is_some_and(|p| p.starts_with("SCRAM-SHA-256$") || p.starts_with("md5")) => {
                problems.push(format!(
                    "[migration] admin_user {:?} needs a plaintext password (password or password_file): a subscription logs in to the other server with it",
                    m.admin_user
                ))
            }
            Some(_) => {}
        }
        if m.catchup_timeout.0.is_zero() {
            problems.push("[migration] catchup_timeout must be above 0".into());
        }
    }

    fn validate_auth(&self, problems: &mut Vec<String>) {
        let mut seen = std::collections::HashSet::new();
        for (i, u) in self.auth.users.iter().enumerate() {
            if u.name.is_empty() {
                problems.push(format!("[[auth.users]] #{i}: name is empty"));
            } else if !seen.insert(&u.name) {
                problems.push(format!("[[auth.users]] {:?} is listed twice", u.name));
            }
            if u.password.is_some() && u.password_file.is_some() {
                problems.push(format!("[[auth.users]] {:?}: give password or password_file, not both", u.name));
            }
            let needs_secret = !matches!(self.auth.kind, AuthType::Trust | AuthType::Cert);
            if needs_secret && u.password.is_none() && u.password_file.is_none() {
                problems.push(format!("[[auth.users]] {:?}: no password (auth type needs one)", u.name));
            }
            if let (AuthType::Md5, Some(pw)) = (self.auth.kind, &u.password) {
                if pw.starts_with("SCRAM-SHA-256$") {
                    problems
                        .push(format!("[[auth.users]] {:?}: a SCRAM verifier cannot serve md5 authentication", u.name));
                }
            }
            if u.pool_size == Some(0) {
                problems.push(format!("[[auth.users]] {:?}: pool_size must be at least 1", u.name));
            }
        }
        let a = &self.auth;
        let external = !a.auth_file.is_empty() || !a.auth_user.is_empty();
        if a.users.is_empty() && !external && !matches!(a.kind, AuthType::Trust | AuthType::Cert) {
            problems.push("[auth] no users: add [[auth.users]], auth_file or auth_user".into());
        }
        if !a.auth_user.is_empty() && !a.users.iter().any(|u| u.name == a.auth_user) {
            problems
                .push(format!("[auth] auth_user {:?} must be listed in [[auth.users]] with its password", a.auth_user));
        }
        if !a.auth_user.is_empty() && !a.auth_query.contains("$1") {
            problems.push("[auth] auth_query must take the user name as $1".into());
        }
        let no_client_certs = self.tls.client_ca.is_empty() || self.tls.mode == super::TlsMode::Disable;
        if a.kind == AuthType::Cert && no_client_certs {
            problems.push("[auth] type = \"cert\" needs [tls] mode other than disable and client_ca".into());
        }
        if a.max_failed_logins > 0 && a.failed_login_window.0.is_zero() {
            problems.push("[auth] failed_login_window must be above 0 when max_failed_logins is set".into());
        }
        if !a.auth_hba_file.is_empty() {
            match crate::auth::hba::Hba::load(&a.auth_hba_file) {
                Ok(hba) if hba.uses_cert() && no_client_certs => problems.push(format!(
                    "[auth] auth_hba_file {} has cert lines: they need [tls] mode other than disable and client_ca",
                    a.auth_hba_file
                )),
                Ok(_) => {}
                Err(p) => problems.extend(p),
            }
        }
    }
}

fn validate_backend(name: &str, b: &BackendConfig, problems: &mut Vec<String>) {
    if b.host.is_empty() {
        problems.push(format!("[{name}] host is empty"));
    }
    if b.port == 0 {
        problems.push(format!("[{name}] port must not be 0"));
    }
}
