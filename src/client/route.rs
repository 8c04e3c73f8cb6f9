//! Choosing the backend for a client's next request: the serving store's primary, or the next
//! healthy replica when everything in the request is a read. The migration phase decides which
//! store serves (source, target, or — for reads in shift_reads — a sticky share of sessions).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::request;
use super::session::Session;
use super::state::{RouteOverride, TargetRyw};
use crate::auth::UserEntry;
use crate::config::PoolMode;
use crate::error::ClientError;
use crate::migration::logical::SyncMode;
use crate::migration::Phase;
use crate::pool::cluster::Cluster;
use crate::pool::databases::DbRoute;
use crate::pool::{Backend, Pool, PoolParams, Role};
use crate::router::{Classification, Target};
use crate::session_state::Settings;
use crate::shared::{Runtime, Shared};

/// The pools a client uses toward one store.
pub struct StorePools {
    /// Toward its primary.
    pub primary: Arc<Pool>,
    /// Toward each replica, in the runtime's order.
    pub replicas: Vec<Arc<Pool>>,
}

/// The pools a client uses, resolved once per runtime generation.
pub struct SessionPools {
    /// The role name the client logged in as.
    pub user: Arc<str>,
    /// The database name the client asked for.
    pub database: Arc<str>,
    /// Where the client's database is served: its cluster, server-side name and settings.
    pub db: Arc<DbRoute>,
    /// Transaction or session pooling for this user and database.
    pub mode: PoolMode,
    /// `query_timeout` for this user and database.
    pub query_timeout: Option<std::time::Duration>,
    /// The source (the database's cluster).
    pub source: StorePools,
    /// The migration target, when one is configured and the database is on the `default` cluster
    /// (the one a migration moves).
    pub target: Option<StorePools>,
    /// The startup settings the last client of these pools logged in with (see
    /// [`Self::share_settings`]).
    last_settings: std::sync::Mutex<Settings>,
}

impl SessionPools {
    /// The client's pools in the runtime, shared with every client of the same role and database
    /// (an idle client holds one pointer to them); 3D000 for a database name pgshift does not
    /// serve.
    pub fn resolve(
        shared: &Shared,
        rt: &Runtime,
        user: &Arc<UserEntry>,
        database: &str,
    ) -> Result<Arc<SessionPools>, ClientError> {
        shared.session_pools.get_or_make(rt.generation, &user.name, database, || {
            SessionPools::make(shared, rt, user, database).map(Arc::new)
        })
    }

    fn make(shared: &Shared, rt: &Runtime, user: &Arc<UserEntry>, database: &str) -> Result<SessionPools, ClientError> {
        let db = rt.databases.resolve(database).ok_or_else(|| ClientError::unknown_database(database))?;
        let server_user = db.forced_user.as_ref().unwrap_or(user);
        let pool = |b: &Arc<Backend>| {
            let p = PoolParams {
                settings: rt.pool_settings(&db, server_user, b.role),
                tls: rt.server_tls.clone(),
                connect_timeout: rt.config.proxy.server_connect_timeout.0,
                user: server_user,
                database: &db.server_db,
                name: &db.name,
                max_db_connections: rt.max_db_connections(&db),
                max_user_connections: rt.max_user_connections(&server_user.name),
            };
            shared.pools.get(b, p)
        };
        let on_default = db.cluster.name == crate::config::DEFAULT_CLUSTER;
        let target = rt
            .targets
            .split_first()
            .filter(|_| on_default)
            .map(|(p, replicas)| StorePools { primary: pool(p), replicas: replicas.iter().map(pool).collect() });
        let source =
            StorePools { primary: pool(&db.cluster.primary), replicas: db.cluster.replicas.iter().map(pool).collect() };
        Ok(SessionPools {
            mode: rt.pool_mode_for(&db, &user.name),
            query_timeout: rt.query_timeout_for(&db, &user.name),
            source,
            target,
            user: user.name.as_str().into(),
            database: database.into(),
            db,
            last_settings: Default::default(),
        })
    }

    /// `settings`, or an equal set the last client of these pools logged in with: clients of
    /// one application usually send the same startup parameters, and then share one copy (the
    /// set is copied on write, so a client's SET never reaches another).
    pub fn share_settings(&self, settings: Settings) -> Settings {
        let mut last = self.last_settings.lock().unwrap_or_else(|e| e.into_inner());
        if *last == settings {
            return last.clone();
        }
        last.clone_from(&settings);
        settings
    }

    /// The database's cluster.
    pub fn cluster(&self) -> &Arc<Cluster> {
        &self.db.cluster
    }

    /// The serving store's primary pool for a phase.
    pub fn primary_for(&self, phase: Phase) -> &Arc<Pool> {
        match (&self.target, phase.target_serves()) {
            (Some(t), true) => &t.primary,
            _ => &self.source.primary,
        }
    }

    /// The server's ParameterStatus set, cached per pool; the first client of a pool opens a
    /// connection to learn it (which also surfaces an unknown database as PostgreSQL's 3D000).
    pub async fn server_params(&self, phase: Phase) -> Result<Arc<Vec<(String, String)>>, ClientError> {
        let pool = self.primary_for(phase);
        let cached = pool.server_params.lock().ok().and_then(|p| p.clone());
        if let Some(p) = cached {
            return Ok(p);
        }
        let mut lease = pool.checkout(std::future::pending()).await.map_err(|e| ClientError::from(&e))?;
        let params = Arc::new(lease.conn().params.clone());
        pool.checkin(lease);
        Ok(params)
    }
}

/// Why a request went where it went (for logs and the admin port).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Primary or replica.
    pub target: Target,
    /// A short reason.
    pub reason: &'static str,
}

/// The pure routing rule: may a request with these statements go to a replica?
pub fn decide(rt: &Runtime, route: RouteOverride, classes: &[Arc<Classification>]) -> Decision {
    let primary = |reason| Decision { target: Target::Primary, reason };
    if !rt.config.routing.read_write_split {
        return primary("read_write_split is off");
    }
    match route {
        RouteOverride::Primary => return primary("session route = primary"),
        RouteOverride::Replica => return Decision { target: Target::Replica, reason: "session route = replica" },
        RouteOverride::Auto => {}
    }
    if classes.is_empty() {
        return primary("no statement to classify");
    }
    if let Some(c) = classes.iter().find(|c| c.target == Target::Primary) {
        return primary(c.reason);
    }
    Decision { target: Target::Replica, reason: classes[0].reason }
}

/// Whether the classifier itself proved every statement a read (a hint or a session route only
/// vouches for it).
fn proven_read(classes: &[Arc<Classification>]) -> bool {
    !classes.is_empty() && classes.iter().all(|c| c.statements.iter().all(|s| s.target == Target::Replica))
}

/// A chosen backend: where, through which pool, as primary or replica.
pub type Choice = (Arc<Backend>, Arc<Pool>, Target);

impl Session {
    /// The backend, pool and target for the request of `len` bytes at the front of `cin`.
    /// With `replicas_ok` false a read goes to the primary too (the last attempt of a read).
    pub(super) fn route(&mut self, len: usize, phase: Phase, replicas_ok: bool) -> Result<Choice, ClientError> {
        let rt = self.rt.clone();
        let serving_target = phase.target_serves() && self.pools.target.is_some();
        let (primary_b, primary_p) = if serving_target {
            (
                rt.targets[0].clone(),
                self.pools
                    .target
                    .as_ref()
                    .map(|t| t.primary.clone())
                    .unwrap_or_else(|| self.pools.source.primary.clone()),
            )
        } else {
            (self.pools.cluster().primary.clone(), self.pools.source.primary.clone())
        };
        let may_read_elsewhere = rt.config.routing.read_write_split
            && (!self.pools.cluster().replicas.is_empty() || rt.targets.len() > 1 || phase == Phase::ShiftReads);
        let classes = if may_read_elsewhere || primary_b.health.in_recovery.load(Ordering::Relaxed) {
            request::classifications(&self.shared, &rt, &self.state, &self.cin[..len])
        } else {
            Vec::new()
        };
        if classes.len() == 1 && self.cin.first() == Some(&crate::wire::tag::QUERY) {
            self.state.routed_query = classes.first().cloned();
        }
        // A pinned client keeps the server it lands on: that must be one that takes writes.
        let decision = if self.state.pinned {
            Decision { target: Target::Primary, reason: "pinned" }
        } else if self.state.shadows_builtins() {
            // What reads as a built-in may be the user's function: nothing is proven a read.
            Decision { target: Target::Primary, reason: "search_path" }
        } else {
            decide(&rt, self.state.route, &classes)
        };
        if decision.target == Target::Primary {
            let writes = classes.is_empty() || classes.iter().any(|c| c.target == Target::Primary);
            if let Some(e) = self.primary_refusal(&rt, serving_target, &primary_b, writes) {
                return Err(e);
            }
            return Ok((primary_b, primary_p, Target::Primary));
        }
        // A read that ends up on the primary: one only a hint or `pgshift.route` vouches for may
        // be a write, and gets the primary's checks.
        let vouched = !proven_read(&classes);
        // A read retried after its replica connection ended goes to the primary: not to another
        // replica, where a read that ends its own backend would end again, and again.
        if !replicas_ok || self.read_retried {
            return self.read_on_primary(&rt, serving_target, vouched, (primary_b, primary_p, Target::Primary));
        }
        let executes = request::executes(&self.cin[..len]);
        if phase == Phase::ShiftReads && self.reads_from_target() {
            // The target's primary takes writes but does not serve them yet: a hint or
            // `pgshift.route` vouching for a write must not reach it (a replica refuses it).
            if let Some(choice) = self.pick_target_read(&rt, executes, proven_read(&classes)) {
                self.shared.migration.count_reads(&self.pools.db.server_db, true, u64::from(executes));
                return Ok(choice);
            }
        }
        if phase == Phase::ShiftReads {
            self.shared.migration.count_reads(&self.pools.db.server_db, false, u64::from(executes));
        }
        if serving_target {
            return Ok(self.pick_target_read(&rt, executes, true).unwrap_or((primary_b, primary_p, Target::Primary)));
        }
        match self.pick_source_read(&rt, executes) {
            Some(choice) => Ok(choice),
            None => self.read_on_primary(&rt, serving_target, vouched, (primary_b, primary_p, Target::Primary)),
        }
    }

    /// A read sent to the primary. One only `vouched` for (a hint, `pgshift.route`) may be a
    /// write: during a split brain it goes to no node, as writes do. Before discovery has heard
    /// from every node no read goes to the node named primary (it may be a stale one, and a
    /// session-mode client would keep it for its writes). (While there is no primary, every node
    /// that answers is in recovery and refuses a write itself.)
    fn read_on_primary(
        &self,
        rt: &Runtime,
        serving_target: bool,
        vouched: bool,
        primary: Choice,
    ) -> Result<Choice, ClientError> {
        use crate::pool::cluster::TopologyState::{Discovering, SplitBrain};
        if !rt.config.routing.role_discovery || serving_target {
            return Ok(primary);
        }
        match self.pools.cluster().failovers.state() {
            SplitBrain if vouched => Err(super::failover::no_primary(SplitBrain)),
            // The node named primary may be a stale one, and a session would stay on it.
            Discovering => Err(super::failover::no_primary(Discovering)),
            _ => Ok(primary),
        }
    }

    /// Why a request may not go to the primary now, if it may not: with role discovery, while
    /// the cluster has no primary or a split brain; a write (`writes`) while the primary reports
    /// being in recovery.
    fn primary_refusal(
        &self,
        rt: &Runtime,
        serving_target: bool,
        primary: &Backend,
        writes: bool,
    ) -> Option<ClientError> {
        let state = self.pools.cluster().failovers.state();
        if rt.config.routing.role_discovery && !serving_target && state != crate::pool::cluster::TopologyState::Primary
        {
            return Some(super::failover::no_primary(state));
        }
        if writes && primary.health.in_recovery.load(Ordering::Relaxed) {
            return Some(ClientError::error(
                "25006",
                "pgshift refuses to send this to the configured primary: it reports being in recovery \
                 (read-only), so a failover may have happened that pgshift was not told about",
            ));
        }
        None
    }

    /// shift_reads: this session is in the target's share, and the target has replayed the
    /// client's own last write (read-your-writes across stores).
    fn reads_from_target(&mut self) -> bool {
        let m = &self.shared.migration;
        if !m.session_reads_target(&self.pools.db.server_db, self.handle.id) {
            return false;
        }
        match m.sync_mode() {
            SyncMode::Statement => m.mirror.applied_seq.load(Ordering::Relaxed) >= self.state.writes().last_mirror_seq,
            SyncMode::Logical => self.target_applied_my_writes(),
        }
    }

    /// Logical sync: whether the target has applied this client's last write, by the monitor's
    /// samples of the source's WAL position and the subscription's applied position.
    fn target_applied_my_writes(&mut self) -> bool {
        let Some(db) = self.shared.migration.logical.get(&self.pools.db.server_db) else { return false };
        let Some(w) = self.state.writes.as_deref_mut() else { return true }; // never wrote
        let needed = match w.target_ryw {
            TargetRyw::Clear => return true,
            TargetRyw::WroteAt(at) if db.sampled_at.load(Ordering::Acquire) <= at => return false,
            TargetRyw::WroteAt(_) => db.publisher_lsn.load(Ordering::Acquire),
            TargetRyw::Lsn(lsn) => lsn,
        };
        let done = db.applied_lsn.load(Ordering::Acquire) >= needed;
        w.target_ryw = if done { TargetRyw::Clear } else { TargetRyw::Lsn(needed) };
        done
    }

    /// A healthy target replica, else the target primary (as a read) when `primary_ok`.
    fn pick_target_read(&self, rt: &Runtime, executes: bool, primary_ok: bool) -> Option<Choice> {
        let t = self.pools.target.as_ref()?;
        let replicas = rt.targets.get(1..).unwrap_or_default();
        let usable = |i: usize| replicas[i].serves_reads(rt) && !t.replicas[i].refuses_logins();
        if let Some(i) = rt.rr.pick(replicas.len(), executes, usable) {
            return Some((replicas[i].clone(), t.replicas[i].clone(), Target::Replica));
        }
        if !primary_ok || t.primary.refuses_logins() {
            return None;
        }
        Some((rt.targets.first()?.clone(), t.primary.clone(), Target::Replica))
    }

    /// A healthy source replica that has replayed the client's own writes, if any.
    fn pick_source_read(&mut self, rt: &Runtime, executes: bool) -> Option<Choice> {
        let cluster = self.pools.cluster().clone();
        if cluster.replicas.is_empty() {
            return None;
        }
        let needed = match self.read_your_writes_lsn(rt, &cluster) {
            Ok(n) => n,
            Err(()) => {
                cluster.primary.health.ryw_fallbacks.fetch_add(1, Ordering::Relaxed);
                return None;
            }
        };
        let pools = &self.pools.source.replicas;
        let usable = |i: usize| {
            let b = &cluster.replicas[i];
            b.serves_reads(rt) && !pools[i].refuses_logins() && needed.is_none_or(|lsn| b.replayed(lsn))
        };
        match cluster.rr.pick(cluster.replicas.len(), executes, usable) {
            Some(i) => Some((cluster.replicas[i].clone(), self.pools.source.replicas[i].clone(), Target::Replica)),
            None => {
                if needed.is_some() {
                    cluster.primary.health.ryw_fallbacks.fetch_add(1, Ordering::Relaxed);
                }
                None
            }
        }
    }

    /// The WAL position a replica must have replayed to serve this client's reads: `Ok(None)`
    /// if there is no recent write to read back, `Err` if it is not known yet (no primary sample
    /// taken after the write): then only the primary is safe.
    fn read_your_writes_lsn(&mut self, rt: &Runtime, cluster: &Cluster) -> Result<Option<u64>, ()> {
        let Some(w) = self.state.writes.as_deref_mut().filter(|w| w.last_write_at != 0) else { return Ok(None) };
        if !rt.config.routing.read_your_writes {
            return Ok(None);
        }
        if w.ryw_lsn == 0 {
            let p = &cluster.primary.health;
            if p.lsn_sampled_at.load(Ordering::Relaxed) <= w.last_write_at {
                return Err(());
            }
            w.ryw_lsn = p.lsn.load(Ordering::Relaxed);
        }
        let lsn = w.ryw_lsn;
        if cluster.replicas.iter().all(|r| r.replayed(lsn)) {
            w.last_write_at = 0; // every replica has it: no constraint any more
            w.ryw_lsn = 0;
            return Ok(None);
        }
        Ok(Some(lsn))
    }
}

/// Roles of the backends a choice can name (for `Role` users outside this module).
pub fn is_target(role: Role) -> bool {
    matches!(role, Role::TargetPrimary | Role::TargetReplica)
}
