//! State shared by every task: the swappable runtime (config, users, backends, TLS), pools, stats,
//! the session registry, and the shutdown/pause signals.
//!
//! Passed in as `Arc<Shared>` rather than held in globals, so tests can run many proxies in one
//! process. A session loads the runtime once per transaction, so a reload never tears one.

use arc_swap::ArcSwap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Notify};

use crate::auth::UserEntry;
use crate::auth::Users;
use crate::client::registry::Sessions;
use crate::config::DEFAULT_CLUSTER;
use crate::config::{Config, PoolMode};
use crate::pool::cluster::{Cluster, Failovers, RoundRobin, TopologyState};
use crate::pool::databases::{Databases, DbRoute};
use crate::pool::{Backend, PoolSettings, Pools, Role};
use crate::router::{ClassifierCache, ClassifierConfig};
use crate::session_state::PreparedRegistry;
use crate::stats::Stats;
use crate::tls::{ClientTls, ServerTls};

/// Everything derived from one configuration; replaced whole on reload.
pub struct Runtime {
    /// The configuration it was built from.
    pub config: Arc<Config>,
    /// Users and their secrets.
    pub users: Users,
    /// Host-based access rules from `auth_hba_file` (read at each build, so reload re-reads it).
    pub hba: Option<Arc<crate::auth::hba::Hba>>,
    /// The `default` cluster's primary (`[primary]`, or the node discovery promoted).
    pub primary: Arc<Backend>,
    /// The `default` cluster's replicas, in config order.
    pub replicas: Vec<Arc<Backend>>,
    /// Every cluster, `default` first.
    pub clusters: Vec<Arc<Cluster>>,
    /// Client-facing database names.
    pub databases: Databases,
    /// A migration's target backends (primary first), if a migration is configured.
    pub targets: Vec<Arc<Backend>>,
    /// Round-robin cursor over the migration target's replicas.
    pub rr: RoundRobin,
    /// Extra read-only functions for the classifier.
    pub classifier: ClassifierConfig,
    /// Client-side TLS, when enabled.
    pub client_tls: Option<Arc<ClientTls>>,
    /// Server-side TLS, when enabled.
    pub server_tls: Option<Arc<ServerTls>>,
    /// Increases with each reload, so sessions know to re-resolve their pools.
    pub generation: u64,
}

/// The files a configuration names: `auth_hba_file`, the client TLS certificate, key and CA, and
/// the TLS files toward PostgreSQL. Each one that cannot be loaded is a problem.
type Files = (Option<Arc<crate::auth::hba::Hba>>, Option<Arc<ClientTls>>, Option<Arc<ServerTls>>);

fn load_files(config: &Config, problems: &mut Vec<String>) -> Files {
    let cert_auth = config.auth.kind == crate::config::AuthType::Cert;
    let hba = match config.auth.auth_hba_file.as_str() {
        "" => None,
        path => match crate::auth::hba::Hba::load(path) {
            Ok(h) => Some(Arc::new(h)),
            Err(p) => {
                problems.extend(p);
                None
            }
        },
    };
    check_unix_socket_dir(&config.proxy.unix_socket_dir, problems);
    let client_tls = match crate::tls::ClientTls::from_config(&config.tls, cert_auth) {
        Ok(t) => t.map(Arc::new),
        Err(e) => {
            problems.push(e);
            None
        }
    };
    let server_tls = match crate::tls::ServerTls::from_config(&config.tls) {
        Ok(t) => t.map(Arc::new),
        Err(e) => {
            problems.push(e);
            None
        }
    };
    (hba, client_tls, server_tls)
}

/// `[proxy] unix_socket_dir`, when set, must be an existing directory.
fn check_unix_socket_dir(dir: &str, problems: &mut Vec<String>) {
    if dir.is_empty() {
        return;
    }
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => problems.push(format!("[proxy] unix_socket_dir {dir} is not a directory")),
        Err(e) => problems.push(format!("[proxy] cannot use unix_socket_dir {dir}: {e}")),
    }
}

impl Runtime {
    /// Builds a runtime; `previous` lends backends (with their health) and learned keys.
    pub fn build(config: Config, previous: Option<&Runtime>) -> Result<Runtime, Vec<String>> {
        let mut problems = Vec::new();
        // Files first (pg_hba, TLS certificates and keys, then auth_file), so that one missing
        // file does not hide the others: --check-config lists them all.
        let (hba, client_tls, server_tls) = load_files(&config, &mut problems);
        let users = match Users::from_config(&config.auth) {
            Ok(u) => u,
            Err(e) => {
                problems.push(e);
                return Err(problems);
            }
        };
        if let Some(p) = previous {
            users.inherit_learned(&p.users);
        }
        crate::backup::check(&config, &users, &mut problems);
        // auth_file users are known only now; [[auth.users]] were checked with the config.
        if let Some(p) = config.fleet.store_role_problem(|r| users.get(r).is_some()) {
            if !problems.contains(&p) {
                problems.push(p);
            }
        }
        let reuse = |role: Role, address: String, name: String| -> Arc<Backend> {
            let old = previous.into_iter().flat_map(|p| p.targets.iter());
            old.clone()
                .find(|b| b.address == address && b.role == role)
                .cloned()
                .unwrap_or_else(|| Arc::new(Backend::new(role, address, name)))
        };
        let clusters = build_clusters(&config, previous, &mut problems);
        let Some(default) = clusters.first().cloned() else {
            return Err(problems);
        };
        let databases = Databases::build(&config.databases, &clusters, &users).unwrap_or_else(|p| {
            problems.extend(p);
            Databases::default()
        });
        let targets = match &config.migration {
            Some(m) => std::iter::once(reuse(Role::TargetPrimary, m.target.address(), "target".into()))
                .chain(
                    m.target_replicas
                        .iter()
                        .enumerate()
                        .map(|(i, r)| reuse(Role::TargetReplica, r.address(), format!("target_replica{i}"))),
                )
                .collect(),
            None => Vec::new(),
        };
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Runtime {
            // PostgreSQL's default since 9.1; with it off, backslashes in literals make the
            // classifier unsure (primary) rather than risk misreading a statement.
            classifier: ClassifierConfig {
                standard_conforming_strings: true,
                ..ClassifierConfig::with_safe_functions(&config.routing.safe_functions)
            },
            users,
            hba,
            primary: default.primary.clone(),
            replicas: default.replicas.clone(),
            clusters,
            databases,
            targets,
            rr: RoundRobin::default(),
            client_tls,
            server_tls,
            generation: previous.map_or(1, |p| p.generation + 1),
            config: Arc::new(config),
        })
    }

    /// Every backend: each cluster's nodes, then the migration target's.
    pub fn backends(&self) -> impl Iterator<Item = &Arc<Backend>> {
        self.clusters.iter().flat_map(|c| c.nodes()).chain(self.targets.iter())
    }

    /// The cluster a backend belongs to (`None` for a migration target's).
    pub fn cluster_of(&self, b: &Backend) -> Option<&Arc<Cluster>> {
        self.clusters.iter().find(|c| c.nodes().any(|n| std::ptr::eq(n.as_ref(), b)))
    }

    /// The migration target's backends (empty without a migration).
    pub fn target_backends(&self) -> std::slice::Iter<'_, Arc<Backend>> {
        self.targets.iter()
    }

    /// Pool limits for `user`'s pool of database `db` toward a backend of `role`. A pool size
    /// comes from `[users]`, then `[[auth.users]]`, then `[databases]`, then `[proxy]`.
    pub fn pool_settings(&self, db: &DbRoute, user: &UserEntry, role: Role) -> PoolSettings {
        let p = &self.config.proxy;
        let d = &db.settings;
        let u = self.config.users.get(&user.name);
        let primary = matches!(role, Role::Primary | Role::TargetPrimary);
        let size = u.and_then(|u| u.pool_size).or(user.pool_size).or(d.pool_size).unwrap_or(p.default_pool_size);
        PoolSettings {
            size,
            min: d.min_pool_size.unwrap_or(p.min_pool_size).min(size),
            reserve: d.reserve_pool_size.unwrap_or(p.reserve_pool_size),
            reserve_timeout: p.reserve_pool_timeout.0,
            wait_timeout: p.query_wait_timeout.0,
            idle_timeout: p.server_idle_timeout.enabled(),
            lifetime: d.server_lifetime.unwrap_or(p.server_lifetime).enabled(),
            check_delay: p.server_check_delay.enabled(),
            max_prepared: p.max_prepared_statements,
            connect_retry: if primary { p.server_connect_retry.0 } else { Duration::ZERO },
            cancel_wait: p.cancel_wait_timeout.enabled().unwrap_or(Duration::from_secs(365 * 86_400)),
        }
    }

    /// Transaction or session pooling for a user of a database: `[users]`, then `[databases]`,
    /// then `[proxy]`.
    pub fn pool_mode_for(&self, db: &DbRoute, user: &str) -> PoolMode {
        let u = self.config.users.get(user).and_then(|u| u.pool_mode);
        u.or(db.settings.pool_mode).unwrap_or(self.config.proxy.pool_mode)
    }

    /// `query_timeout` for a user of a database, in the same order (`None`: off).
    pub fn query_timeout_for(&self, db: &DbRoute, user: &str) -> Option<Duration> {
        let u = self.config.users.get(user).and_then(|u| u.query_timeout);
        u.or(db.settings.query_timeout).unwrap_or(self.config.proxy.query_timeout).enabled()
    }

    /// `max_db_connections` of a database (0 = none).
    pub fn max_db_connections(&self, db: &DbRoute) -> usize {
        db.settings.max_db_connections.unwrap_or(self.config.proxy.max_db_connections)
    }

    /// `max_user_connections` of a user (0 = none).
    pub fn max_user_connections(&self, user: &str) -> usize {
        let u = self.config.users.get(user).and_then(|u| u.max_user_connections);
        u.unwrap_or(self.config.proxy.max_user_connections)
    }

    /// `max_db_client_connections` of a database (0 = none).
    pub fn max_db_client_connections(&self, db: &DbRoute) -> usize {
        db.settings.max_db_client_connections.unwrap_or(self.config.proxy.max_db_client_connections)
    }

    /// `max_user_client_connections` of a user (0 = none).
    pub fn max_user_client_connections(&self, user: &str) -> usize {
        let u = self.config.users.get(user).and_then(|u| u.max_user_client_connections);
        u.unwrap_or(self.config.proxy.max_user_client_connections)
    }
}

/// The clusters of a configuration, `default` first. A node keeps its health (and a cluster its
/// failover record) from `previous` when it is still there in the same role.
fn build_clusters(
    config: &crate::config::Config,
    previous: Option<&Runtime>,
    problems: &mut Vec<String>,
) -> Vec<Arc<Cluster>> {
    let names = std::iter::once(DEFAULT_CLUSTER.to_string()).chain(config.clusters.keys().cloned());
    // With role discovery, a new cluster takes no write until every node has been probed once.
    let first_state = if config.routing.role_discovery { TopologyState::Discovering } else { TopologyState::Primary };
    let mut out = Vec::new();
    for name in names {
        let Some(hosts) = config.cluster_hosts(&name) else {
            problems.push(format!("[clusters.{name}]: no usable hosts"));
            continue;
        };
        let old = previous.and_then(|p| p.clusters.iter().find(|c| c.name == name));
        let prefix = if name == DEFAULT_CLUSTER { String::new() } else { format!("{name}.") };
        let node = |role: Role, address: String, label: String| {
            old.and_then(|c| c.nodes().find(|b| b.address == address && b.role == role).cloned())
                .unwrap_or_else(|| Arc::new(Backend::new(role, address, format!("{prefix}{label}"))))
        };
        let mut hosts = hosts.into_iter();
        let Some(first) = hosts.next() else { continue };
        out.push(Arc::new(Cluster {
            primary: node(Role::Primary, first.address(), "primary".into()),
            replicas: hosts.enumerate().map(|(i, h)| node(Role::Replica, h.address(), format!("replica{i}"))).collect(),
            rr: RoundRobin::default(),
            failovers: old.map_or_else(|| Arc::new(Failovers::new(first_state)), |c| c.failovers.clone()),
            name,
        }));
    }
    out
}

/// The process-wide state handed to every task.
pub struct Shared {
    /// Current runtime.
    pub runtime: ArcSwap<Runtime>,
    /// Pools, kept across reloads.
    pub pools: Pools,
    /// Latency and error statistics.
    pub stats: Stats,
    /// Connected clients (for cancel, the admin port and kill).
    pub sessions: Sessions,
    /// Proxy-wide prepared statement names.
    pub prepared: PreparedRegistry,
    /// Classification cache by statement text.
    pub classify_cache: ClassifierCache,
    /// The pools each (role, database) uses, shared by its clients.
    pub session_pools: crate::client::pools_cache::PoolsCache,
    /// Set when SIGTERM starts a drain: sessions close at their next transaction boundary.
    pub draining: AtomicBool,
    /// Wakes sessions waiting on a drain or pause change.
    pub drain_notify: Notify,
    /// True while PAUSE holds new transactions.
    pub paused: watch::Sender<bool>,
    /// Bumped by RECONNECT: connections older than the epoch close at check-in.
    pub reconnect_epoch: AtomicU64,
    /// Open client sockets, against `max_client_conn`.
    pub conn_count: crate::client::listener::ConnCount,
    /// The client listener's address once bound (its real port when `listen` names port 0).
    pub listen_addr: std::sync::OnceLock<std::net::SocketAddr>,
    /// Turns true when the proxy stops: listeners and background tasks end.
    pub stop: watch::Sender<bool>,
    /// Users looked up with auth_query.
    pub auth_cache: crate::auth::query::AuthCache,
    /// Failed logins by client address (`max_failed_logins`), kept across reloads.
    pub failed_logins: crate::auth::limit::FailedLogins,
    /// LISTEN fan-out.
    pub notify: Arc<crate::notify::NotifyHub>,
    /// The migration-phase switch.
    pub migration: crate::migration::Migration,
    /// Admin port and console state (config path for RELOAD, last readiness probe).
    pub admin: crate::admin::AdminShared,
    /// The backup lock and what `/metrics` shows of backups and WAL archiving.
    pub backup: crate::backup::Backups,
    /// Cancel requests passed on to other instances of the fleet, by outcome.
    pub cancel_forwards: crate::client::fleet::ForwardCounters,
    /// The fleet: shared phase, fences, members.
    pub fleet: crate::fleet::Fleet,
    /// A binary upgrade handing clients to the new process (open only while it runs).
    pub handover: crate::upgrade::Handover,
}

impl Shared {
    /// Wraps a runtime.
    pub fn new(runtime: Runtime) -> Arc<Shared> {
        let state_file = runtime.config.migration.as_ref().map(|m| std::path::PathBuf::from(&m.state_file));
        Arc::new(Shared {
            migration: crate::migration::Migration::new(state_file),
            runtime: ArcSwap::from_pointee(runtime),
            pools: Pools::default(),
            stats: Stats::default(),
            sessions: Sessions::default(),
            prepared: PreparedRegistry::default(),
            classify_cache: ClassifierCache::new(16_384),
            session_pools: Default::default(),
            draining: AtomicBool::new(false),
            drain_notify: Notify::new(),
            paused: watch::channel(false).0,
            reconnect_epoch: AtomicU64::new(0),
            listen_addr: std::sync::OnceLock::new(),
            conn_count: Default::default(),
            stop: watch::channel(false).0,
            auth_cache: Default::default(),
            failed_logins: Default::default(),
            notify: Default::default(),
            admin: Default::default(),
            backup: Default::default(),
            handover: Default::default(),
            cancel_forwards: Default::default(),
            fleet: Default::default(),
        })
    }

    /// The `default` cluster's role discovery state and failover record.
    pub fn failovers(&self) -> Arc<Failovers> {
        let rt = self.runtime.load();
        rt.clusters.first().map_or_else(Default::default, |c| c.failovers.clone())
    }

    /// True once a drain has started.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }
}
