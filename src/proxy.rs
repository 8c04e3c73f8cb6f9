//! A running proxy: listeners, background upkeep, reload, drain and stop. The binary and the
//! tests both start proxies through here, so tests can run many in one process.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::client::listener::ClientListener;
use crate::client::socket_file::SocketFile;
use crate::config::{Config, ConfigError};
use crate::shared::{Runtime, Shared};
use crate::upgrade::listen::Bind;

/// Why a proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
}

/// A started proxy.
pub struct Proxy {
    /// Shared state (for the admin port and tests).
    pub shared: Arc<Shared>,
    /// Where clients connect.
    pub addr: SocketAddr,
    /// Where the admin HTTP port listens, if enabled.
    pub admin_addr: Option<String>,
    /// The Unix socket clients may connect to (`[proxy] unix_socket_dir`), if enabled.
    pub unix_socket: Option<PathBuf>,
    /// The client listeners; closed apart from the rest at a binary upgrade (and opened again
    /// if the new process fails).
    listening: Mutex<Listening>,
    tasks: Vec<JoinHandle<()>>,
    config_path: Option<PathBuf>,
}

/// The client listeners running now.
#[derive(Default)]
struct Listening {
    /// Turns true to stop their accept loops.
    stop: Option<watch::Sender<bool>>,
    tasks: Vec<JoinHandle<()>>,
    /// Removes the Unix socket's file at drain, stop, or drop.
    socket_file: Option<SocketFile>,
}

impl Listening {
    /// Stops accepting; the tasks to wait for (each passes on its listen queue first, during a
    /// handover).
    fn close(&mut self) -> Vec<JoinHandle<()>> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(true);
        }
        if let Some(f) = self.socket_file.take() {
            f.remove();
        }
        std::mem::take(&mut self.tasks)
    }
}

impl Proxy {
    /// Builds the runtime, binds the listeners, and starts serving.
    pub async fn start(config: Config, config_path: Option<PathBuf>) -> Result<Proxy, StartError> {
        Proxy::start_as(config, config_path, Bind::Fresh).await
    }

    /// [`Proxy::start`], sharing the ports of the process being upgraded with `Bind::Upgrade`.
    pub async fn start_as(config: Config, config_path: Option<PathBuf>, bind: Bind) -> Result<Proxy, StartError> {
        let runtime = Runtime::build(config, None).map_err(ConfigError)?;
        let shared = Shared::new(runtime);
        let stop_rx = shared.stop.subscribe();
        crate::pool::health::spawn_probes(&shared, &stop_rx);
        // A fleet member takes the fleet's migration state before it serves its first client.
        let fleet = crate::fleet::sync::start(&shared, stop_rx.clone()).await;
        let listening = listen_clients(&shared, bind).await?;
        let addr = *shared
            .listen_addr
            .get()
            .ok_or(StartError::Bind { addr: String::new(), source: std::io::Error::other("no listen address") })?;
        let unix_socket = listening
            .socket_file
            .as_ref()
            .and_then(|_| shared.runtime.load().config.proxy.unix_socket_path(addr.port()));
        let mut tasks = vec![tokio::spawn(upkeep(shared.clone(), stop_rx.clone()))];
        tasks.extend(fleet);
        tasks.push(tokio::spawn(crate::topology::watch(shared.clone(), stop_rx.clone())));
        crate::migration::logical::monitor::resume(&shared);
        tasks.push(tokio::spawn(crate::migration::logical::monitor::run(shared.clone(), stop_rx.clone())));
        tasks.push(tokio::spawn(crate::migration::schedule::run(shared.clone(), stop_rx.clone())));
        tasks.push(tokio::spawn(crate::migration::ramp::run(shared.clone(), stop_rx.clone())));
        tasks.extend(crate::backup::spawn(&shared, &stop_rx));
        let admin_addr = match crate::admin::start(shared.clone(), config_path.clone(), stop_rx, bind).await {
            Ok(Some((a, task))) => {
                let _ = shared.admin.bound.set(a.clone());
                tasks.push(task);
                Some(a)
            }
            Ok(None) => None,
            Err(e) => {
                let _ = shared.stop.send(true);
                let mut listening = listening;
                listening.close();
                return Err(e);
            }
        };
        let unix_shown = unix_socket.as_ref().map_or("off".into(), |p| p.display().to_string());
        tracing::info!(%addr, unix_socket = %unix_shown, admin = admin_addr.as_deref().unwrap_or("off"), "pgshift listening");
        log_startup_summary(&shared.runtime.load());
        let listening = Mutex::new(listening);
        Ok(Proxy { shared, addr, admin_addr, unix_socket, listening, tasks, config_path })
    }

    /// Stops accepting clients, waiting until every accept loop has ended. During a handover
    /// the loops pass the connections still queued on their sockets to the new process.
    pub async fn stop_listening(&self) {
        let tasks = self.listening.lock().unwrap_or_else(|e| e.into_inner()).close();
        for t in tasks {
            let _ = t.await;
        }
    }

    /// Accepts clients again after [`Proxy::stop_listening`] (an upgrade whose new process
    /// failed): the ports are bound anew, shared with whatever still holds them.
    pub async fn resume_listening(&self) -> Result<(), StartError> {
        let listening = listen_clients(&self.shared, Bind::Upgrade).await?;
        let mut old = std::mem::replace(&mut *self.listening.lock().unwrap_or_else(|e| e.into_inner()), listening);
        old.close();
        Ok(())
    }

    /// Re-reads the config file (SIGHUP).
    pub fn reload(&self) -> Result<(), Vec<String>> {
        reload(&self.shared, self.config_path.as_deref())
    }

    /// SIGTERM: stop accepting, let running transactions finish, close idle clients; returns
    /// true if every client left within `timeout`.
    pub async fn drain(&self, timeout: Duration) -> bool {
        let _ = self.shared.stop.send(true);
        self.stop_listening().await;
        drain(&self.shared, timeout).await
    }

    /// Stops everything now (clients are closed with 57P01).
    pub async fn stop(&self) {
        let _ = self.shared.stop.send(true);
        self.listening.lock().unwrap_or_else(|e| e.into_inner()).close();
        self.shared.draining.store(true, std::sync::atomic::Ordering::Relaxed);
        for s in self.shared.sessions.all() {
            s.signals.raise(crate::client::registry::Signals::KILL);
        }
        for p in self.shared.pools.all() {
            p.retire();
        }
    }
}

impl Drop for Proxy {
    /// Stops listening and background tasks; clients already connected finish on their own.
    fn drop(&mut self) {
        let _ = self.shared.stop.send(true);
        let listeners = self.listening.lock().unwrap_or_else(|e| e.into_inner()).close();
        for t in listeners.iter().chain(&self.tasks) {
            t.abort();
        }
    }
}

/// Binds the client listeners (`[proxy] listen`, and the Unix socket if set) and starts their
/// accept loops.
async fn listen_clients(shared: &Arc<Shared>, bind: Bind) -> Result<Listening, StartError> {
    let listen = shared.runtime.load().config.proxy.listen.clone();
    let tcp = crate::upgrade::listen::tcp(&listen, bind)
        .await
        .map_err(|source| StartError::Bind { addr: listen.clone(), source })?;
    let addr = tcp.local_addr().map_err(|source| StartError::Bind { addr: listen, source })?;
    let _ = shared.listen_addr.set(addr);
    let (unix, socket_file) = bind_unix_socket(shared, addr.port(), bind)?.unzip();
    let (stop, stop_rx) = watch::channel(false);
    let serve = |l| tokio::spawn(crate::client::listener::serve(shared.clone(), l, stop_rx.clone()));
    let mut tasks = vec![serve(ClientListener::Tcp(tcp))];
    tasks.extend(unix.map(|l| serve(ClientListener::Unix(l))));
    Ok(Listening { stop: Some(stop), tasks, socket_file })
}

/// Binds `[proxy] unix_socket_dir`'s socket for a listener on `port`; `None` when not set. In an
/// upgrade the new socket replaces the old process's file atomically.
fn bind_unix_socket(
    shared: &Shared,
    port: u16,
    bind: Bind,
) -> Result<Option<(tokio::net::UnixListener, SocketFile)>, StartError> {
    let rt = shared.runtime.load();
    let p = &rt.config.proxy;
    let Some(path) = p.unix_socket_path(port) else { return Ok(None) };
    // validate() has checked the mode; 0777 is its default.
    let mode = p.unix_socket_mode_bits().unwrap_or(0o777);
    let bound = match bind {
        Bind::Fresh => crate::client::socket_file::bind(&path, mode),
        Bind::Upgrade => crate::client::socket_file::bind_replacing(&path, mode),
    };
    bound.map(Some).map_err(|source| StartError::Bind { addr: path.display().to_string(), source })
}

/// Stops accepting is the caller's job; this marks the drain and waits for clients to leave.
pub async fn drain(shared: &Shared, timeout: Duration) -> bool {
    shared.draining.store(true, std::sync::atomic::Ordering::Relaxed);
    let deadline = Instant::now() + timeout;
    loop {
        shared.drain_notify.notify_waiters();
        for s in shared.sessions.all() {
            s.signals.raise(crate::client::registry::Signals::DRAIN);
        }
        if shared.sessions.is_empty() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Loads the config again and swaps the runtime in; the old one stays if the new one is invalid.
pub fn reload(shared: &Arc<Shared>, path: Option<&std::path::Path>) -> Result<(), Vec<String>> {
    let Some(path) = path else {
        return Err(vec!["no config file to reload from".into()]);
    };
    let config = Config::load(path).map_err(|e| e.0)?;
    reload_with(shared, config)
}

/// Swaps in a runtime built from `config` (an operator's reload: SIGHUP, the admin port). With
/// role discovery on, each cluster keeps the primary discovery found while the new config still
/// lists that node in the cluster: the file names the primary as first declared, and a node a
/// failover demoted may be back out of recovery on its old timeline, where no write must go.
pub fn reload_with(shared: &Arc<Shared>, mut config: Config) -> Result<(), Vec<String>> {
    if config.routing.role_discovery {
        let old = shared.runtime.load_full();
        for cluster in &old.clusters {
            crate::topology::promote_in_config(&mut config, &cluster.name, &cluster.primary.address);
        }
    }
    swap_runtime(shared, config)
}

/// Swaps in a runtime built from `config` as it is, updating pools in place.
pub fn swap_runtime(shared: &Arc<Shared>, config: Config) -> Result<(), Vec<String>> {
    let old = shared.runtime.load_full();
    if config.proxy.listen != old.config.proxy.listen {
        tracing::warn!("[proxy] listen changed: it takes effect at the next restart");
    }
    let (new_p, old_p) = (&config.proxy, &old.config.proxy);
    if new_p.unix_socket_dir != old_p.unix_socket_dir || new_p.unix_socket_mode != old_p.unix_socket_mode {
        tracing::warn!("[proxy] unix_socket_dir / unix_socket_mode changed: it takes effect at the next restart");
    }
    let rt = Runtime::build(config, Some(&old))?;
    // A pool stays if its database is still served from the same server database on a cluster
    // (or migration target) that still has its node, and its user can still log in.
    let placed = |k: &crate::pool::PoolKey| {
        let db = rt.databases.resolve(&k.name).filter(|d| d.server_db == k.database)?;
        let user = match &db.forced_user {
            Some(u) if u.name == k.user => u.clone(),
            Some(_) => return None,
            None => rt.users.get(&k.user)?,
        };
        let on_default = db.cluster.name == crate::config::DEFAULT_CLUSTER;
        let extra = rt.targets.iter().filter(|_| on_default);
        let node = db.cluster.nodes().chain(extra).find(|b| b.address == k.address)?.clone();
        Some((db, user, node))
    };
    shared.pools.retain(|k, _| placed(k).is_some());
    for (key, pool) in shared.pools.entries() {
        let Some((db, user, node)) = placed(&key) else { continue };
        pool.settings.store(Arc::new(rt.pool_settings(&db, &user, node.role)));
        let spec = pool.spec.load();
        let new_spec = crate::server::LoginSpec {
            address: spec.address.clone(),
            backend_name: node.name.clone(),
            user,
            database: spec.database.clone(),
            connect_timeout: rt.config.proxy.server_connect_timeout.0,
            tls: rt.server_tls.clone(),
        };
        pool.spec.store(Arc::new(new_spec));
        shared.pools.limits.db_conns(&db.name, rt.max_db_connections(&db));
        shared.pools.limits.user_conns(&key.user, rt.max_user_connections(&key.user));
    }
    shared.runtime.store(Arc::new(rt));
    // Classifications depend on the classifier's settings (safe_functions...): forget those
    // made under the old ones.
    shared.classify_cache.clear();
    crate::pool::health::spawn_probes_shared(shared);
    tracing::info!("configuration reloaded");
    Ok(())
}

/// Once a second: close idle and old server connections, keep `min_pool_size` warm.
async fn upkeep(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        for pool in shared.pools.all() {
            for _ in 0..pool.maintain() {
                let p = pool.clone();
                tokio::spawn(async move { p.warm_one().await });
            }
        }
    }
}

/// Everything start checks short of binding its ports: the configuration and the files it names
/// (TLS certificates, keys and CA, `auth_file`, `auth_hba_file`, `unix_socket_dir`), every
/// problem listed.
pub fn check(config: &Config) -> Result<(), Vec<String>> {
    Runtime::build(config.clone(), None).map(|_| ())
}

/// The effective setup in a few log lines: TLS, pooling, each cluster's hosts and each database.
fn log_startup_summary(rt: &Runtime) {
    let p = &rt.config.proxy;
    tracing::info!(
        client_tls = %spelled(&rt.config.tls.mode),
        server_tls = %spelled(&rt.config.tls.server_mode),
        pool_mode = %spelled(&p.pool_mode),
        default_pool_size = p.default_pool_size,
        max_client_conn = p.max_client_conn,
        role_discovery = rt.config.routing.role_discovery,
        read_write_split = rt.config.routing.read_write_split,
        "effective settings"
    );
    // Node names, not addresses: the log names no database host (the admin port's /stats does).
    for c in &rt.clusters {
        let replicas: Vec<&str> = c.replicas.iter().map(|b| b.name.as_str()).collect();
        tracing::info!(cluster = %c.name, primary = %c.primary.name, replicas = %replicas.join(","), "cluster");
    }
    for d in rt.databases.listed() {
        let s = &d.settings;
        tracing::info!(
            database = %d.name,
            cluster = %d.cluster.name,
            server_database = %d.server_db,
            pool_size = s.pool_size.unwrap_or(p.default_pool_size),
            pool_mode = %spelled(&s.pool_mode.unwrap_or(p.pool_mode)),
            "database"
        );
    }
    match rt.databases.any() {
        Some((_, c)) => tracing::info!(cluster = %c.name, "database *: any other name, the same name on the server"),
        None => tracing::info!("no \"*\" database: other database names are refused"),
    }
}

/// A setting's value as proxy.toml spells it (`verify-full`, `transaction`).
fn spelled<T: serde::Serialize>(v: &T) -> String {
    match toml::Value::try_from(v) {
        Ok(toml::Value::String(s)) => s,
        _ => String::new(),
    }
}
