//! Readiness: does the primary answer a real query within 5 s?
//!
//! The probe opens its own connection instead of leasing from a pool, so a busy pool (every
//! connection leased, clients queued) never makes a healthy proxy look unready, and a probe never
//! takes a connection a client is waiting for. It logs in as a pool toward the primary does
//! (same user and database), or, before any client came, as the first configured user to the
//! database of the same name, and runs `;`.
//!
//! `GET /ready` goes through [`cached`]: at most one probe runs at a time, requests arriving while
//! it runs wait for its answer, and requests within `[admin] ready_probe_interval` after it reuse
//! that answer. So a flood of readiness requests costs PostgreSQL one login per interval.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Mutex;

use crate::auth::UserEntry;
use crate::server::{LoginSpec, ServerConn, ServerError};
use crate::shared::{Runtime, Shared};

/// Bound on the whole probe (connect, login, query).
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// The last probe's outcome: 0 none yet, 1 ready, 2 not ready.
#[derive(Debug, Default)]
pub struct LastProbe(AtomicU8);

impl LastProbe {
    /// `Some(true)` if the last probe passed, `None` before the first.
    pub fn get(&self) -> Option<bool> {
        match self.0.load(Ordering::Relaxed) {
            1 => Some(true),
            2 => Some(false),
            _ => None,
        }
    }
    fn set(&self, ok: bool) {
        self.0.store(if ok { 1 } else { 2 }, Ordering::Relaxed);
    }
}

/// The last probe's answer and when it came, shared by every `/ready` request.
#[derive(Debug, Default)]
pub struct ProbeCache(Arc<Mutex<Option<Answer>>>);

/// When a probe answered, and what.
type Answer = (Instant, Result<Duration, String>);

/// The readiness answer, probing PostgreSQL only when no probe answered since this request
/// arrived and the last answer is older than `[admin] ready_probe_interval`.
pub async fn cached(shared: &Arc<Shared>) -> Result<Duration, String> {
    if shared.is_draining() {
        return Err(DRAINING.to_string());
    }
    let arrived = Instant::now();
    let interval = shared.runtime.load().config.admin.ready_probe_interval.0;
    // Held across the probe: requests arriving meanwhile queue here and then read its answer.
    let mut last = shared.admin.ready_cache.0.clone().lock_owned().await;
    if let Some((at, answer)) = &*last {
        if *at >= arrived || at.elapsed() < interval {
            return answer.clone();
        }
    }
    // In a task of its own, holding the lock: a requester that hangs up does not cancel the probe
    // (and so cannot make the next request start another).
    let shared = shared.clone();
    let probing = tokio::spawn(async move {
        let answer = probe(&shared).await;
        *last = Some((Instant::now(), answer.clone()));
        answer
    });
    probing.await.unwrap_or_else(|e| Err(format!("the readiness probe failed: {e}")))
}

const DRAINING: &str = "pgshift is shutting down (draining)";

/// Whom the probe logs in as: a primary pool's identity, or the first configured user.
fn probe_spec(shared: &Shared, rt: &Runtime) -> LoginSpec {
    let timeout = rt.config.proxy.server_connect_timeout.0.min(PROBE_TIMEOUT);
    let from_pool = shared.pools.all().into_iter().find(|p| p.spec.load().address == rt.primary.address);
    let (user, database) = match from_pool {
        Some(p) => {
            let spec = p.spec.load();
            (spec.user.clone(), spec.database.clone())
        }
        None => {
            let name = rt.config.auth.users.first().map_or("postgres", |u| u.name.as_str());
            let user = rt.users.get(name).unwrap_or_else(|| Arc::new(UserEntry::new(name, None, None)));
            (user, name.to_string())
        }
    };
    LoginSpec {
        address: rt.primary.address.clone(),
        backend_name: rt.primary.name.clone(),
        user,
        database,
        connect_timeout: timeout,
        tls: rt.server_tls.clone(),
    }
}

async fn run_probe(spec: &LoginSpec) -> Result<(), String> {
    let mut conn = match ServerConn::connect(spec, 0, 0).await {
        Ok(c) => c,
        // Authenticated, then told the database is missing: the primary answers (this happens
        // only on the fallback identity, before any client created a pool).
        Err(ServerError::Refused { code, .. }) if code == "3D000" => return Ok(()),
        Err(e) => return Err(format!("primary {}: {e}", spec.address)),
    };
    let result = conn.run_internal(";").await;
    conn.close();
    match result {
        Ok(None) => Ok(()),
        Ok(Some(msg)) => Err(format!("primary {} answered the probe with an error: {msg}", spec.address)),
        Err(e) => Err(format!("primary {}: {e}", spec.address)),
    }
}

/// Probes the primary now (one new PostgreSQL session); `Ok(elapsed)` if it answered within [`PROBE_TIMEOUT`], else why not.
pub async fn probe(shared: &Shared) -> Result<Duration, String> {
    let outcome = async {
        if shared.is_draining() {
            return Err(DRAINING.to_string());
        }
        let rt = shared.runtime.load_full();
        let spec = probe_spec(shared, &rt);
        let started = Instant::now();
        match tokio::time::timeout(PROBE_TIMEOUT, run_probe(&spec)).await {
            Ok(Ok(())) => Ok(started.elapsed()),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(format!("primary {} did not answer within {}s", spec.address, PROBE_TIMEOUT.as_secs())),
        }
    }
    .await;
    shared.admin.last_ready.set(outcome.is_ok());
    outcome
}
