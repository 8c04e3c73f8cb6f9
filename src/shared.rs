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

use crate::auth::Users;
use crate::client::registry::Sessions;
use crate::config::{Config, PoolMode};
use crate::pool::cluster::RoundRobin;
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
    /// The primary.
    pub primary: Arc<Backend>,
    /// Replicas, in config order.
    pub replicas: Vec<Arc<Backend>>,
    /// A migration's target backends (primary first), if a migration is configured.
    pub targets: Vec<Arc<Backend>>,
    /// Round-robin cursor over replicas.
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

impl Runtime {
    /// Builds a runtime; `previous` lends backends (with their health) and learned keys.
    pub fn build(config: Config, previous: Option<&Runtime>) -> Result<Runtime, Vec<String>> {
        let mut problems = Vec::new();
        let users = Users::from_config(&config.auth).map_err(|e| vec![e])?;
        if let Some(p) = previous {
            users.inherit_learned(&p.users);
        }
        let reuse = |role: Role, address: String, name: String| -> Arc<Backend> {
            let old = previous
                .into_iter()
                .flat_map(|p| std::iter::once(&p.primary).chain(p.replicas.iter()).chain(p.targets.iter()));
            old.clone()
                .find(|b| b.address == address && b.role == role)
                .cloned()
                .unwrap_or_else(|| Arc::new(Backend::new(role, address, name)))
        };
        let primary = reuse(Role::Primary, config.primary.address(), "primary".into());
        let replicas = config
            .replicas
            .iter()
            .enumerate()
            .map(|(i, r)| reuse(Role::Replica, r.address(), format!("replica{i}")))
            .collect();
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
            primary,
            replicas,
            targets,
            rr: RoundRobin::default(),
            client_tls,
            server_tls,
            generation: previous.map_or(1, |p| p.generation + 1),
            config: Arc::new(config),
        })
    }

    /// The role of the backend at `address`, if it is in this runtime.
    pub fn role_of(&self, address: &str) -> Option<Role> {
        std::iter::once(&self.primary)
            .chain(self.replicas.iter())
            .chain(self.targets.iter())
            .find(|b| b.address == address)
            .map(|b| b.role)
    }

    /// The migration target's backends (empty without a migration).
    pub fn target_backends(&self) -> std::slice::Iter<'_, Arc<Backend>> {
        self.targets.iter()
    }

    /// Pool limits for a user's pool toward a backend of `role`.
    pub fn pool_settings(&self, pool_size: Option<usize>, role: Role) -> PoolSettings {
        let p = &self.config.proxy;
        let primary = matches!(role, Role::Primary | Role::TargetPrimary);
        PoolSettings {
            size: pool_size.unwrap_or(p.default_pool_size),
            min: p.min_pool_size,
            reserve: p.reserve_pool_size,
            reserve_timeout: p.reserve_pool_timeout.0,
            wait_timeout: p.query_wait_timeout.0,
            idle_timeout: p.server_idle_timeout.enabled(),
            lifetime: p.server_lifetime.enabled(),
            check_delay: p.server_check_delay.enabled(),
            max_prepared: p.max_prepared_statements,
            connect_retry: if primary { p.server_connect_retry.0 } else { Duration::ZERO },
            cancel_wait: p.cancel_wait_timeout.enabled().unwrap_or(Duration::from_secs(365 * 86_400)),
        }
    }

    /// Transaction or session pooling.
    pub fn pool_mode(&self) -> PoolMode {
        self.config.proxy.pool_mode
    }
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
    /// Role discovery: failovers, the current state, and the wake-up for clients waiting on it.
    pub failovers: crate::pool::cluster::Failovers,
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
            draining: AtomicBool::new(false),
            drain_notify: Notify::new(),
            paused: watch::channel(false).0,
            reconnect_epoch: AtomicU64::new(0),
            conn_count: Default::default(),
            stop: watch::channel(false).0,
            auth_cache: Default::default(),
            failed_logins: Default::default(),
            notify: Default::default(),
            admin: Default::default(),
            failovers: Default::default(),
        })
    }

    /// True once a drain has started.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }
}
