//! Choosing the backend for a client's next request: the primary, or the next healthy replica
//! when everything in the request is a read.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::request;
use super::session::Session;
use super::state::RouteOverride;
use crate::auth::UserEntry;
use crate::error::ClientError;
use crate::pool::{Backend, Pool, PoolParams};
use crate::router::{Classification, Target};
use crate::shared::{Runtime, Shared};

/// The pools a client uses, resolved once per runtime generation.
pub struct SessionPools {
    /// Toward the primary.
    pub primary: Arc<Pool>,
    /// Toward each replica, in the runtime's order.
    pub replicas: Vec<Arc<Pool>>,
}

impl SessionPools {
    /// Looks up (or creates) the client's pools in the runtime.
    pub fn resolve(shared: &Shared, rt: &Runtime, user: &Arc<UserEntry>, database: &str) -> SessionPools {
        let params = || PoolParams {
            settings: rt.pool_settings(user.pool_size),
            tls: rt.server_tls.clone(),
            connect_timeout: rt.config.proxy.server_connect_timeout.0,
            user,
        };
        SessionPools {
            primary: shared.pools.get(&rt.primary, database, params()),
            replicas: rt.replicas.iter().map(|b| shared.pools.get(b, database, params())).collect(),
        }
    }

    /// The server's ParameterStatus set, cached per pool; the first client of a pool opens a
    /// connection to learn it (which also surfaces an unknown database as PostgreSQL's 3D000).
    pub async fn server_params(&self, shared: &Shared) -> Result<Arc<Vec<(String, String)>>, ClientError> {
        let cached = self.primary.server_params.lock().ok().and_then(|p| p.clone());
        if let Some(p) = cached {
            return Ok(p);
        }
        let no_cancel = tokio::sync::Notify::new();
        let lease = self.primary.checkout(&no_cancel).await.map_err(|e| ClientError::from(&e))?;
        let _ = shared;
        let params = Arc::new(lease_params(lease, &self.primary));
        Ok(params)
    }
}

fn lease_params(mut lease: crate::pool::Lease, pool: &Pool) -> Vec<(String, String)> {
    let params = lease.conn().params.clone();
    pool.checkin(lease);
    params
}

/// Why a request went where it went (for logs and the admin port).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Primary or replica.
    pub target: Target,
    /// A short reason.
    pub reason: &'static str,
}

/// The pure routing rule: where may a request with these statements go?
pub fn decide(rt: &Runtime, route: RouteOverride, classes: &[Arc<Classification>]) -> Decision {
    let primary = |reason| Decision { target: Target::Primary, reason };
    if !rt.config.routing.read_write_split {
        return primary("read_write_split is off");
    }
    if rt.replicas.is_empty() {
        return primary("no replicas configured");
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

impl Session {
    /// The backend, pool and target for the request of `len` bytes at the front of `cin`.
    pub(super) fn route(&mut self, len: usize) -> Result<(Arc<Backend>, Arc<Pool>, Target), ClientError> {
        let rt = self.rt.clone();
        let classes = if rt.config.routing.read_write_split && !rt.replicas.is_empty()
            || rt.primary.health.in_recovery.load(Ordering::Relaxed)
        {
            request::classifications(&self.shared, &rt, &self.state, &self.cin[..len])
        } else {
            Vec::new()
        };
        let decision = decide(&rt, self.state.route, &classes);
        let primary = (rt.primary.clone(), self.pools.primary.clone(), Target::Primary);
        if decision.target == Target::Primary {
            let writes = classes.is_empty() || classes.iter().any(|c| c.target == Target::Primary);
            if writes && rt.primary.health.in_recovery.load(Ordering::Relaxed) {
                return Err(ClientError::error(
                    "25006",
                    "pgshift refuses to send this to the configured primary: it reports being in recovery \
                     (read-only), so a failover may have happened that pgshift was not told about",
                ));
            }
            return Ok(primary);
        }
        let needed = match self.read_your_writes_lsn(&rt) {
            Ok(n) => n,
            Err(()) => {
                rt.primary.health.ryw_fallbacks.fetch_add(1, Ordering::Relaxed);
                return Ok(primary);
            }
        };
        let usable = |i: usize| {
            let b = &rt.replicas[i];
            b.serves_reads(&rt) && needed.is_none_or(|lsn| b.replayed(lsn))
        };
        let executes = request::executes(&self.cin[..len]);
        match rt.rr.pick(rt.replicas.len(), executes, usable) {
            Some(i) => Ok((rt.replicas[i].clone(), self.pools.replicas[i].clone(), Target::Replica)),
            None => {
                if needed.is_some() {
                    rt.primary.health.ryw_fallbacks.fetch_add(1, Ordering::Relaxed);
                }
                Ok(primary)
            }
        }
    }

    /// The WAL position a replica must have replayed to serve this client's reads: `Ok(None)`
    /// if there is no recent write to read back, `Err` if it is not known yet (no primary sample
    /// taken after the write): then only the primary is safe.
    fn read_your_writes_lsn(&mut self, rt: &Runtime) -> Result<Option<u64>, ()> {
        if !rt.config.routing.read_your_writes || self.state.last_write_at == 0 {
            return Ok(None);
        }
        if self.state.ryw_lsn == 0 {
            let p = &rt.primary.health;
            if p.lsn_sampled_at.load(Ordering::Relaxed) <= self.state.last_write_at {
                return Err(());
            }
            self.state.ryw_lsn = p.lsn.load(Ordering::Relaxed);
        }
        let lsn = self.state.ryw_lsn;
        if rt.replicas.iter().all(|r| r.replayed(lsn)) {
            self.state.last_write_at = 0; // every replica has it: no constraint any more
            self.state.ryw_lsn = 0;
            return Ok(None);
        }
        Ok(Some(lsn))
    }
}
