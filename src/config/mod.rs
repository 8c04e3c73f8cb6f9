//! proxy.toml: typed settings with PgBouncer's defaults, environment overrides, and validation.
//!
//! Loading goes file -> TOML tree -> environment overrides applied to the tree -> typed structs ->
//! `validate()`. Every problem found (unknown keys, bad types per section, inconsistent values) is
//! collected and reported together, so an operator fixes a config in one pass.

mod backup;
mod duration;
mod env;
mod fleet;
mod log;
mod migration;
mod topology;
mod validate;
mod words;

pub use backup::{file_safe_name, BackupConfig, PG_BIN_FALLBACK};
pub use duration::Dur;
pub use fleet::{FleetConfig, FleetPeer, StoreUrl, MAX_FLEET_CLIENTS, MAX_FLEET_ID};
pub use log::{LogConfig, LogFormat};
pub use migration::{MigrationConfig, MirrorMode, SyncChoice};
pub use topology::{parse_hosts, ClusterConfig, DatabaseConfig, UserSettings, ANY_DATABASE, DEFAULT_CLUSTER};

use serde::{Deserialize, Serialize};
use std::path::Path;

/// Every problem found in a configuration, one line each.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n  - {}", .0.join("\n  - "))]
pub struct ConfigError(pub Vec<String>);

/// The whole proxy.toml.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct Config {
    /// Client listener and pooling.
    pub proxy: ProxyConfig,
    /// Who may connect and how they prove it.
    pub auth: AuthConfig,
    /// TLS toward clients and toward PostgreSQL.
    pub tls: TlsConfig,
    /// The primary (read-write) PostgreSQL.
    pub primary: BackendConfig,
    /// Streaming replicas that serve reads.
    pub replicas: Vec<BackendConfig>,
    /// Read/write split and replica health.
    pub routing: RoutingConfig,
    /// The sidecar HTTP admin port.
    pub admin: AdminConfig,
    /// An online migration to a new database; absent means none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub migration: Option<MigrationConfig>,
    /// Logical backups from a replica, with retention; absent means none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backup: Option<BackupConfig>,
    /// The log's format.
    pub log: LogConfig,
    /// Other pgshift instances behind the same load balancer, for cancel requests.
    pub fleet: FleetConfig,
    /// More clusters besides `default` (`[primary]` + `[[replicas]]`), by name.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub clusters: std::collections::BTreeMap<String, ClusterConfig>,
    /// Client-facing database names; empty: every name goes to `default` unchanged.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub databases: std::collections::BTreeMap<String, DatabaseConfig>,
    /// Per-user pool settings and limits.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub users: std::collections::BTreeMap<String, UserSettings>,
}

/// How long a client keeps its server connection.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum PoolMode {
    /// Server given back at the end of each transaction (ReadyForQuery 'I').
    #[default]
    Transaction,
    /// Server kept for the client's whole connection; reset with `server_reset_query` after.
    Session,
}

/// `[proxy]`: the listener and the pools, with PgBouncer's meanings and defaults.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct ProxyConfig {
    /// Address clients connect to.
    pub listen: String,
    /// Directory of a Unix-domain socket clients may also connect to, `<dir>/.s.PGSQL.<port>`
    /// with the port of `listen` (libpq's `host=<dir>`); empty: no Unix socket.
    pub unix_socket_dir: String,
    /// Permissions of the socket file, in octal as chmod takes them.
    pub unix_socket_mode: String,
    /// transaction | session.
    pub pool_mode: PoolMode,
    /// Server connections per (user, database, backend).
    pub default_pool_size: usize,
    /// Connections kept open even when idle.
    pub min_pool_size: usize,
    /// Extra connections allowed once a client has waited `reserve_pool_timeout`.
    pub reserve_pool_size: usize,
    /// Wait before the reserve pool may be used.
    pub reserve_pool_timeout: Dur,
    /// Logged-in clients beyond this are refused with 53300.
    pub max_client_conn: usize,
    /// Connections still logging in (TLS, startup, password) beyond this are refused with 53300,
    /// counted apart from `max_client_conn` so idle unauthenticated sockets cannot lock clients out.
    pub max_pending_logins: usize,
    /// Longest wait for a server connection; the client then gets an error and is disconnected.
    pub query_wait_timeout: Dur,
    /// Idle server connections older than this are closed (down to `min_pool_size`).
    pub server_idle_timeout: Dur,
    /// Server connections older than this are closed at check-in.
    pub server_lifetime: Dur,
    /// Runtime worker threads; 0 means one per core.
    pub workers: usize,
    /// Bound on TCP connect + login to PostgreSQL.
    pub server_connect_timeout: Dur,
    /// Keep retrying a refused primary connection this long before failing the client: a short
    /// wait across a PostgreSQL restart beats an error (0 = fail at once).
    pub server_connect_retry: Dur,
    /// A connection idle longer than this gets a probe query before it is handed out.
    pub server_check_delay: Dur,
    /// Query run on a server before another client gets it in session mode.
    pub server_reset_query: String,
    /// Transaction mode: reset every server session after every transaction, not only after
    /// transactions that ran something not proven free of session effects.
    pub server_reset_query_always: bool,
    /// Longest a server connection waits for a cancel request toward it to be processed before
    /// another client may have it; past it the connection is closed.
    pub cancel_wait_timeout: Dur,
    /// Bound on the whole client login dialogue.
    pub client_login_timeout: Dur,
    /// Cancel a query that runs longer than this (0 = off).
    pub query_timeout: Dur,
    /// Disconnect a client idle in a transaction longer than this (0 = off).
    pub idle_transaction_timeout: Dur,
    /// Disconnect a client idle (outside a transaction) longer than this (0 = off).
    pub client_idle_timeout: Dur,
    /// SIGTERM drain bound: running transactions get this long to finish.
    pub shutdown_timeout: Dur,
    /// SIGUSR2 binary upgrade bound: how long the new process may take to report ready, and then
    /// how long clients inside a transaction get to finish it before they are closed.
    pub upgrade_timeout: Dur,
    /// Protocol-level prepared statements kept per server connection (0 disables tracking).
    pub max_prepared_statements: usize,
    /// Largest client message accepted, in bytes (COPY data streams and is not bounded by it); a
    /// larger one ends the session with 54000. It bounds what one client can make pgshift buffer.
    pub max_packet_size: usize,
    /// Named prepared statements one client may hold at once in transaction mode; a Parse past
    /// it is refused with 53400 (0 = no limit).
    pub max_client_prepared_statements: usize,
    /// What to do with session-only features in transaction mode: "pin" or "reject".
    pub session_features: SessionFeatures,
    /// Server connections per database (all users and hosts together); a client that would need
    /// more waits up to `query_wait_timeout`, then gets 53300 (0 = no limit).
    pub max_db_connections: usize,
    /// Server connections per user (all databases and hosts together), as above (0 = no limit).
    pub max_user_connections: usize,
    /// Clients connected to one database at once; more are refused with 53300 (0 = no limit).
    pub max_db_client_connections: usize,
    /// Clients connected as one user at once; more are refused with 53300 (0 = no limit).
    pub max_user_client_connections: usize,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            listen: "127.0.0.1:6432".into(),
            unix_socket_dir: String::new(),
            unix_socket_mode: "0777".into(),
            pool_mode: PoolMode::Transaction,
            default_pool_size: 20,
            min_pool_size: 0,
            reserve_pool_size: 0,
            reserve_pool_timeout: Dur::secs(5),
            max_client_conn: 10_000,
            max_pending_logins: 1000,
            query_wait_timeout: Dur::secs(120),
            server_idle_timeout: Dur::secs(600),
            server_lifetime: Dur::secs(3600),
            workers: 0,
            server_connect_timeout: Dur::secs(5),
            server_connect_retry: Dur::secs(2),
            server_check_delay: Dur::secs(30),
            server_reset_query: "DISCARD ALL".into(),
            server_reset_query_always: false,
            cancel_wait_timeout: Dur::secs(10),
            client_login_timeout: Dur::secs(60),
            query_timeout: Dur::secs(0),
            idle_transaction_timeout: Dur::secs(0),
            client_idle_timeout: Dur::secs(0),
            shutdown_timeout: Dur::secs(30),
            upgrade_timeout: Dur::secs(30),
            max_prepared_statements: 200,
            max_client_prepared_statements: 1000,
            max_packet_size: 64 * 1024 * 1024,
            session_features: SessionFeatures::Pin,
            max_db_connections: 0,
            max_user_connections: 0,
            max_db_client_connections: 0,
            max_user_client_connections: 0,
        }
    }
}

impl ProxyConfig {
    /// The Unix socket's path for clients of a listener on `port`: `<unix_socket_dir>/.s.PGSQL.<port>`,
    /// the name libpq looks for; `None` when `unix_socket_dir` is empty.
    pub fn unix_socket_path(&self, port: u16) -> Option<std::path::PathBuf> {
        (!self.unix_socket_dir.is_empty()).then(|| Path::new(&self.unix_socket_dir).join(format!(".s.PGSQL.{port}")))
    }

    /// `unix_socket_mode` as permission bits (octal, as chmod takes it); `None` if it is not
    /// an octal number within 0777.
    pub fn unix_socket_mode_bits(&self) -> Option<u32> {
        u32::from_str_radix(self.unix_socket_mode.trim(), 8).ok().filter(|m| *m <= 0o777)
    }
}

/// Session-only features (advisory locks, temp tables, WITH HOLD cursors, SQL PREPARE) in
/// transaction mode.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum SessionFeatures {
    /// Keep the client on its server connection for the rest of its session.
    #[default]
    Pin,
    /// Refuse the statement with a clear error (0A000).
    Reject,
}

/// Client authentication method.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
pub enum AuthType {
    /// SCRAM-SHA-256 (PostgreSQL's default).
    #[default]
    #[serde(rename = "scram-sha-256")]
    ScramSha256,
    /// MD5 challenge.
    #[serde(rename = "md5")]
    Md5,
    /// No password asked.
    #[serde(rename = "trust")]
    Trust,
    /// A TLS client certificate (checked against `[tls] client_ca`) whose CN is the user name.
    #[serde(rename = "cert")]
    Cert,
}

/// `[auth]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct AuthConfig {
    /// scram-sha-256 | md5 | trust | cert.
    #[serde(rename = "type")]
    pub kind: AuthType,
    /// Users allowed to connect.
    pub users: Vec<UserConfig>,
    /// More users from a PgBouncer userlist.txt (`"name" "secret"` per line); config users win.
    pub auth_file: String,
    /// Role that runs `auth_query` for users not listed here (its password must be listed).
    pub auth_user: String,
    /// Fetches a user's verifier from PostgreSQL; `$1` is the user name.
    pub auth_query: String,
    /// Database `auth_query` runs in.
    pub auth_database: String,
    /// How long an `auth_query` answer (found or not) is reused.
    pub auth_query_ttl: Dur,
    /// A pg_hba.conf-format file: per connection type, database, user and address, the method
    /// (or reject) that replaces `type`; empty: no host-based rules.
    pub auth_hba_file: String,
    /// Failed logins (wrong password, refused by the rules) allowed per client address within
    /// `failed_login_window`; past it the address is refused at once until the window ends (0 = off).
    pub max_failed_logins: u32,
    /// The window of `max_failed_logins`, from an address's first failure in it.
    pub failed_login_window: Dur,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            kind: AuthType::default(),
            users: Vec::new(),
            auth_file: String::new(),
            auth_user: String::new(),
            auth_query: "SELECT usename, passwd FROM pg_shadow WHERE usename = $1".into(),
            auth_database: "postgres".into(),
            auth_query_ttl: Dur::secs(60),
            auth_hba_file: String::new(),
            max_failed_logins: 20,
            failed_login_window: Dur::secs(60),
        }
    }
}

/// One `[[auth.users]]` entry.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct UserConfig {
    /// Role name (the same in PostgreSQL).
    pub name: String,
    /// Plaintext, a PostgreSQL SCRAM verifier, or an md5 hash.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// Read the password from this file instead (first line), so it need not sit in config or env.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password_file: Option<String>,
    /// Overrides `default_pool_size` for this user's pools.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pool_size: Option<usize>,
}

/// Client-side TLS policy.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// Answer SSLRequest with 'N'.
    #[default]
    Disable,
    /// Accept TLS when asked.
    Allow,
    /// Accept TLS when asked (same as allow on the server side, as in PgBouncer).
    Prefer,
    /// Refuse clients that do not use TLS.
    Require,
}

/// Server-side TLS policy.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ServerTlsMode {
    /// Plain TCP.
    #[default]
    Disable,
    /// TLS when the server offers it.
    Prefer,
    /// TLS, without verifying the certificate.
    Require,
    /// TLS with the certificate chained to `server_ca`.
    VerifyCa,
    /// As verify-ca, plus the host name must match.
    VerifyFull,
}

/// `[tls]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct TlsConfig {
    /// Client side: disable | allow | prefer | require.
    pub mode: TlsMode,
    /// Server certificate chain (PEM).
    pub cert: String,
    /// Server private key (PEM).
    pub key: String,
    /// Toward PostgreSQL: disable | prefer | require | verify-ca | verify-full.
    pub server_mode: ServerTlsMode,
    /// CA bundle for verify-ca / verify-full.
    pub server_ca: String,
    /// CA for client certificates (mutual TLS); empty: clients present none.
    pub client_ca: String,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            mode: TlsMode::Disable,
            cert: "certs/server.crt".into(),
            key: "certs/server.key".into(),
            server_mode: ServerTlsMode::Disable,
            server_ca: String::new(),
            client_ca: String::new(),
        }
    }
}

/// A PostgreSQL server address.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct BackendConfig {
    /// Host name or IP.
    pub host: String,
    /// TCP port.
    pub port: u16,
}

impl Default for BackendConfig {
    fn default() -> Self {
        BackendConfig { host: "127.0.0.1".into(), port: 5432 }
    }
}

impl BackendConfig {
    /// `host:port` for connecting and for logs.
    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// `[routing]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct RoutingConfig {
    /// false: everything goes to the primary.
    pub read_write_split: bool,
    /// A replica further behind than this serves no reads.
    pub max_replica_lag: Dur,
    /// A replica more WAL bytes behind the primary than this serves no reads (0 = no limit).
    pub max_replica_lag_bytes: u64,
    /// After a client commits a write, its reads go only to replicas that have replayed it.
    pub read_your_writes: bool,
    /// How often each backend is probed (health, recovery state, WAL position, lag).
    pub health_check_interval: Dur,
    /// A probe slower than this counts as a failure.
    pub health_check_timeout: Dur,
    /// A backend whose probe fails serves nothing until a probe succeeds, for at most this long.
    pub ban_time: Dur,
    /// Role the probes log in as; empty: the first configured user.
    pub health_check_user: String,
    /// Database the probes connect to.
    pub health_check_database: String,
    /// User functions that are read-only (safe on a replica), e.g. "myschema.lookup".
    pub safe_functions: Vec<String>,
    /// Find the primary among `[primary]` and `[[replicas]]` from what they report
    /// (`pg_is_in_recovery()`, timeline) and follow promotions; false: the roles are as declared.
    pub role_discovery: bool,
    /// While no primary answers (a failover), clients that need one wait this long for a promoted
    /// node before they get an error.
    pub failover_timeout: Dur,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        RoutingConfig {
            read_write_split: true,
            max_replica_lag: Dur::secs(10),
            max_replica_lag_bytes: 0,
            read_your_writes: true,
            health_check_interval: Dur::millis(250),
            health_check_timeout: Dur::secs(1),
            ban_time: Dur::secs(30),
            health_check_user: String::new(),
            health_check_database: "postgres".into(),
            safe_functions: Vec::new(),
            role_discovery: true,
            failover_timeout: Dur::secs(30),
        }
    }
}

/// `[admin]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct AdminConfig {
    /// HTTP listen address, or "unix:/path/to.sock"; empty disables the admin port.
    pub listen: String,
    /// Bearer token for mutating endpoints.
    pub token: String,
    /// Users allowed on the PgBouncer-style console (database "pgbouncer").
    pub admin_users: Vec<String>,
    /// `GET /ready` probes PostgreSQL at most once per this interval; requests in between (and
    /// requests arriving while a probe runs) get that probe's answer. 0: no reuse beyond the
    /// probe in flight.
    pub ready_probe_interval: Dur,
    /// A request's headers must arrive within this after the connection opens (or after the first
    /// byte of a later request); 0 = no bound.
    pub header_timeout: Dur,
    /// A kept-alive connection with no request under way is closed after this long without a
    /// byte either way; 0 = no bound.
    pub idle_timeout: Dur,
    /// Admin connections open at once; more are closed as they arrive.
    pub max_connections: usize,
    /// Admin connections open at once from one client address (IPv6: one /64); more are closed as
    /// they arrive. 0 = no bound but `max_connections`.
    pub max_connections_per_ip: usize,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: "127.0.0.1:6480".into(),
            token: String::new(),
            admin_users: Vec::new(),
            ready_probe_interval: Dur::secs(1),
            header_timeout: Dur::secs(10),
            idle_timeout: Dur::secs(60),
            max_connections: 64,
            max_connections_per_ip: 16,
        }
    }
}

impl Config {
    /// Loads a file, applies `PGSHIFT_*` environment overrides, and validates.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(vec![format!("cannot read {}: {e}", path.display())]))?;
        Self::from_toml_with_env(&text, std::env::vars())
    }

    /// Parses TOML text with the given environment, then validates.
    pub fn from_toml_with_env(
        text: &str,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut tree: toml::Table = toml::from_str(text).map_err(|e| ConfigError(vec![format!("TOML syntax: {e}")]))?;
        let mut problems = Vec::new();
        env::apply_overrides(&mut tree, vars, &mut problems);
        validate::unknown_keys(&tree, &mut problems);
        let config = validate::typed(tree, &mut problems);
        if let Some(c) = &config {
            c.validate(&mut problems);
        }
        match config {
            Some(c) if problems.is_empty() => Ok(c),
            _ => Err(ConfigError(problems)),
        }
    }

    /// Parses TOML text without looking at the environment (tests, reload of a given text).
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        Self::from_toml_with_env(text, std::iter::empty())
    }

    /// The effective configuration as TOML, with passwords and the admin token redacted.
    pub fn redacted_toml(&self) -> String {
        let mut c = self.clone();
        for u in &mut c.auth.users {
            if u.password.is_some() {
                u.password = Some("<redacted>".into());
            }
        }
        if !c.admin.token.is_empty() {
            c.admin.token = "<redacted>".into();
        }
        c.fleet.store = crate::config::env::redact_url(&c.fleet.store);
        for d in c.databases.values_mut() {
            if d.password.is_some() {
                d.password = Some("<redacted>".into());
            }
        }
        for cl in c.clusters.values_mut() {
            cl.hosts = cl.hosts.iter().map(|h| crate::config::env::redact_url(h)).collect();
        }
        toml::to_string_pretty(&c).unwrap_or_else(|e| format!("# cannot print config: {e}\n"))
    }
}

#[cfg(test)]
mod tests;
