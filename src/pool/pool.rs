//! One pool of server connections for a (backend, user, database): LIFO idle stack, FIFO waiters,
//! bounded size with a reserve, and an RAII lease so a connection can never leak out of the count.
//!
//! The lock is a std Mutex held only for a few pointer moves, never across an await. A check-in
//! hands the connection straight to the oldest waiter, so a waiting client is woken with a
//! connection in hand rather than racing others for it.

use arc_swap::ArcSwap;
use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

use super::limit::ConnLimit;
use super::upkeep::past;
use super::PoolError;
use crate::server::{LoginSpec, ServerConn};
use crate::stats::PoolStats;

/// ParameterStatus values a server reported at login, shared by the clients of a pool.
pub type ServerParams = Arc<Vec<(String, String)>>;

/// Pool limits and timeouts, swapped as a whole on reload.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    /// Server connections allowed.
    pub size: usize,
    /// Connections kept open when idle.
    pub min: usize,
    /// Extra connections once a waiter has waited `reserve_timeout`.
    pub reserve: usize,
    /// Wait before the reserve may be used.
    pub reserve_timeout: Duration,
    /// Longest wait for a connection.
    pub wait_timeout: Duration,
    /// Idle connections older than this are closed (down to `min`).
    pub idle_timeout: Option<Duration>,
    /// Connections older than this are closed at check-in.
    pub lifetime: Option<Duration>,
    /// A connection idle longer than this is probed with a query before use.
    pub check_delay: Option<Duration>,
    /// Prepared statements kept per connection.
    pub max_prepared: usize,
    /// Keep retrying a refused connection this long before failing the client (primary pools:
    /// a short wait across a restart beats an error; replica pools fail over instead).
    pub connect_retry: Duration,
    /// Longest a connection waits for a cancel in flight before another client may have it;
    /// past it the connection is closed.
    pub cancel_wait: Duration,
}

/// What checkout does with a connection taken from the idle stack.
enum Vetted {
    Ok(Box<ServerConn>),
    Discarded,
    Probe(Box<ServerConn>),
}

/// What a waiter is given.
enum Grant {
    /// A ready connection (boxed: it is large, and handed over only under contention).
    Conn(Box<ServerConn>),
    /// Permission to open one (the slot is already counted).
    Slot,
}

struct Waiter {
    id: u64,
    tx: oneshot::Sender<Grant>,
}

#[derive(Default)]
pub(super) struct Inner {
    /// Idle connections, most recently used last (LIFO keeps a hot working set). Boxed: a
    /// connection moves through checkout and check-in as a pointer, not a few hundred bytes.
    #[allow(clippy::vec_box)]
    pub(super) idle: Vec<Box<ServerConn>>,
    /// Connections counted against the size: idle + leased + being opened.
    pub(super) open: usize,
    /// Of `open`, those being opened right now.
    pub(super) connecting: usize,
    /// Clients waiting, oldest first, with when they started.
    waiters: VecDeque<(Waiter, Instant)>,
    /// Set when the backend left the configuration: check-ins close instead.
    pub(super) retired: bool,
    /// When RECONNECT was last issued: connections opened before it close at check-in.
    pub(super) reconnect_at: Option<Instant>,
}

/// A pool for one (backend, user, database).
pub struct Pool {
    /// How to open connections (swapped on reload when a password or TLS setting changes).
    pub spec: ArcSwap<LoginSpec>,
    /// Current limits.
    pub settings: ArcSwap<PoolSettings>,
    /// Counters for the admin port.
    pub stats: PoolStats,
    inner: Mutex<Inner>,
    /// Limits spanning pools (per database, per user) that every connection here counts against.
    pub(super) limits: Vec<Arc<ConnLimit>>,
    next_waiter: AtomicU64,
    conn_ids: Arc<AtomicU64>,
    /// Parameters PostgreSQL reported at login, cached from the first connection.
    pub server_params: Mutex<Option<ServerParams>>,
    /// Until when (`mono_ms`) the server refuses this role's logins; 0: it does not.
    pub(super) login_refused_until: AtomicU64,
}

/// A leased connection; dropping it without `Pool::checkin` closes the connection and frees its slot.
pub struct Lease {
    conn: Option<Box<ServerConn>>,
    pool: Arc<Pool>,
    /// When it was taken (for the admin port and wait-time stats).
    pub since: Instant,
    /// How long the client waited for it.
    pub waited: Duration,
}

impl Lease {
    /// The connection.
    pub fn conn(&mut self) -> &mut ServerConn {
        self.conn.as_mut().expect("a lease holds its connection until checkin or drop")
    }
    /// The pool it came from.
    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(c) = self.conn.take() {
            self.pool.discard(c);
        }
    }
}

impl Pool {
    /// A new, empty pool.
    pub fn new(
        spec: LoginSpec,
        settings: PoolSettings,
        conn_ids: Arc<AtomicU64>,
        limits: Vec<Arc<ConnLimit>>,
    ) -> Arc<Pool> {
        let pool = Arc::new(Pool {
            spec: ArcSwap::from_pointee(spec),
            settings: ArcSwap::from_pointee(settings),
            stats: PoolStats::default(),
            inner: Mutex::new(Inner::default()),
            limits,
            next_waiter: AtomicU64::new(0),
            conn_ids,
            server_params: Mutex::new(None),
            login_refused_until: AtomicU64::new(0),
        });
        for l in &pool.limits {
            l.join(&pool);
        }
        pool
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding this lock leaves only counters behind; keep serving.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a connection, waiting up to the wait timeout; `cancel` finishing aborts the wait
    /// (it is polled only while the client queues).
    pub async fn checkout(
        self: &Arc<Self>,
        cancel: impl std::future::Future<Output = ()> + Send,
    ) -> Result<Lease, PoolError> {
        let mut cancel = std::pin::pin!(cancel);
        let started = Instant::now();
        // An idle connection handed over at once: `started` is the lease's start too.
        let mut at_once = true;
        loop {
            let settings = self.settings.load_full();
            // The slow paths (connect, queue, liveness probe) are boxed: a future is as big as
            // its largest state, and every idle client's task would otherwise carry their size.
            let conn = match self.take_or_queue(&settings) {
                Ok(Some(idle)) => idle,
                Ok(None) => {
                    at_once = false;
                    Box::pin(self.open_in_slot()).await?
                }
                Err(rx) => {
                    at_once = false;
                    match Box::pin(self.wait(rx, started, &settings, cancel.as_mut())).await? {
                        Grant::Conn(c) => c,
                        Grant::Slot => Box::pin(self.open_in_slot()).await?,
                    }
                }
            };
            let vetted = match self.vet_now(conn, &settings, started) {
                Vetted::Ok(c) => Some(c),
                Vetted::Discarded => None,
                Vetted::Probe(c) => {
                    at_once = false;
                    Box::pin(self.probe(c)).await
                }
            };
            match vetted {
                Some(c) => {
                    // One clock read serves the wait, the lease's start and the transaction's.
                    let (now, waited) = if at_once {
                        (started, Duration::ZERO)
                    } else {
                        let now = Instant::now();
                        (now, now - started)
                    };
                    self.stats.record_wait(waited);
                    return Ok(Lease { conn: Some(c), pool: self.clone(), since: now, waited });
                }
                None => continue,
            }
        }
    }

    /// Under the lock: an idle connection (`Some`), a slot to open one (`None`), or a place in
    /// the queue.
    fn take_or_queue(&self, s: &PoolSettings) -> Result<Option<Box<ServerConn>>, (u64, oneshot::Receiver<Grant>)> {
        let mut inner = self.lock();
        if let Some(c) = inner.idle.pop() {
            return Ok(Some(c));
        }
        if inner.open < s.size && self.take_limits() {
            inner.open += 1;
            inner.connecting += 1;
            return Ok(None);
        }
        let (tx, rx) = oneshot::channel();
        let id = self.next_waiter.fetch_add(1, Ordering::Relaxed);
        inner.waiters.push_back((Waiter { id, tx }, Instant::now()));
        Err((id, rx))
    }

    async fn wait(
        &self,
        (id, mut rx): (u64, oneshot::Receiver<Grant>),
        started: Instant,
        s: &PoolSettings,
        mut cancel: Pin<&mut (dyn std::future::Future<Output = ()> + Send)>,
    ) -> Result<Grant, PoolError> {
        let deadline = tokio::time::Instant::from_std(started + s.wait_timeout);
        let reserve_at = tokio::time::Instant::from_std(started + s.reserve_timeout);
        let mut reserve_tried = s.reserve == 0;
        let outcome = loop {
            // A pool with room whose clients wait only because a database or user limit is full.
            let blocker = self.blocking_limit(s);
            let freed = async {
                match &blocker {
                    Some(l) => {
                        if !l.evict_idle(self) {
                            // A connection elsewhere may close just before we listen: look again soon.
                            let _ = tokio::time::timeout(LIMIT_RECHECK, l.freed.notified()).await;
                        }
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                g = &mut rx => return g.map_err(|_| PoolError::Closed),
                _ = freed => {
                    if self.take_limited_slot(s) {
                        break Ok(Grant::Slot);
                    }
                }
                _ = tokio::time::sleep_until(reserve_at), if !reserve_tried => {
                    reserve_tried = true;
                    if self.take_reserve_slot(s) {
                        break Ok(Grant::Slot);
                    }
                }
                _ = tokio::time::sleep_until(deadline) => break Err(match blocker {
                    Some(l) => PoolError::Limit { limit: l.describe(), waited: s.wait_timeout },
                    None => PoolError::WaitTimeout(s.wait_timeout),
                }),
                _ = &mut cancel => break Err(PoolError::Canceled),
            }
        };
        if self.unqueue(id) {
            return outcome;
        }
        // A grant was sent to us (under the lock) before we could leave the queue: it is in `rx`.
        let Ok(granted) = rx.try_recv() else {
            return outcome;
        };
        match outcome {
            Err(PoolError::WaitTimeout(_) | PoolError::Limit { .. }) => Ok(granted), // just in time: use it
            other => {
                self.give_back(granted);
                other
            }
        }
    }

    /// Leaves the wait queue; false if a grant was already sent to this waiter.
    fn unqueue(&self, id: u64) -> bool {
        let mut inner = self.lock();
        let before = inner.waiters.len();
        inner.waiters.retain(|(w, _)| w.id != id);
        before != inner.waiters.len()
    }

    fn take_reserve_slot(&self, s: &PoolSettings) -> bool {
        let mut inner = self.lock();
        if inner.open < s.size + s.reserve && self.take_limits() {
            inner.open += 1;
            inner.connecting += 1;
            self.stats.reserve_used.fetch_add(1, Ordering::Relaxed);
            true
        } else {
            false
        }
    }

    fn give_back(&self, g: Grant) {
        match g {
            Grant::Conn(c) => self.return_conn(c),
            Grant::Slot => {
                self.lock().connecting -= 1;
                self.release_slot();
            }
        }
    }

    pub(super) async fn open_in_slot(&self) -> Result<Box<ServerConn>, PoolError> {
        let id = self.conn_ids.fetch_add(1, Ordering::Relaxed) + 1;
        let max_prepared = self.settings.load().max_prepared;
        let spec = self.spec.load_full();
        let retry_until = Instant::now() + self.settings.load().connect_retry;
        let mut result = ServerConn::connect(&spec, id, max_prepared).await;
        while result.as_ref().is_err_and(retryable) && Instant::now() < retry_until {
            tokio::time::sleep(Duration::from_millis(100)).await;
            result = ServerConn::connect(&spec, id, max_prepared).await;
        }
        self.lock().connecting -= 1;
        match result {
            Ok(c) => {
                self.stats.connects.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut p) = self.server_params.lock() {
                    if p.is_none() {
                        *p = Some(Arc::new(c.params.clone()));
                    }
                }
                tracing::debug!(conn = c.id, pool = %self.label(), "server connection opened");
                // Boxed once for its whole life: it moves through checkout and check-in as a pointer.
                Ok(Box::new(c))
            }
            Err(e) => {
                self.stats.connect_errors.fetch_add(1, Ordering::Relaxed);
                self.release_slot();
                Err(PoolError::Server(e))
            }
        }
    }

    /// Checks an idle connection before handing it out; `None` if it had to be closed.
    /// Whether an idle connection may serve: too old or dead ones are discarded; one idle longer
    /// than the check delay is probed first.
    fn vet_now(&self, mut c: Box<ServerConn>, s: &PoolSettings, now: Instant) -> Vetted {
        if s.lifetime.is_some_and(|l| past(c.created, l, now)) || !c.healthy_after_idle() {
            self.discard(c);
            return Vetted::Discarded;
        }
        if s.check_delay.is_some_and(|d| past(c.last_used, d, now)) {
            return Vetted::Probe(c);
        }
        Vetted::Ok(c)
    }

    /// Runs the liveness query on a connection that sat idle for a while.
    async fn probe(&self, mut c: Box<ServerConn>) -> Option<Box<ServerConn>> {
        let probe = tokio::time::timeout(Duration::from_secs(5), c.run_internal(";")).await;
        if !matches!(probe, Ok(Ok(None))) || c.broken {
            self.discard(c);
            return None;
        }
        Some(c)
    }

    /// Returns a leased connection; it goes to the oldest waiter, or onto the idle stack.
    /// A connection with a cancel in flight or an unproven session is cleaned first (see
    /// [`super::clean`]), off the caller's path.
    pub fn checkin(self: &Arc<Self>, lease: Lease) {
        self.checkin_at(lease, Instant::now());
    }

    /// [`Pool::checkin`] by a caller that has just read the clock: `now` is the connection's
    /// last use.
    pub fn checkin_at(self: &Arc<Self>, mut lease: Lease, now: Instant) {
        let Some(c) = lease.conn.take() else { return };
        if super::clean::needs_cleaning(&c) && !c.broken {
            let wait = self.settings.load().cancel_wait;
            tokio::spawn(super::clean::clean_then_return(self.clone(), c, wait));
            return;
        }
        self.return_conn_at(c, now);
    }

    pub(super) fn return_conn(&self, c: Box<ServerConn>) {
        self.return_conn_at(c, Instant::now());
    }

    fn return_conn_at(&self, mut c: Box<ServerConn>, now: Instant) {
        let s = self.settings.load();
        let expired = s.lifetime.is_some_and(|l| past(c.created, l, now));
        if c.broken || expired || !c.rbuf.is_empty() {
            self.discard(c);
            return;
        }
        c.last_used = now;
        let mut inner = self.lock();
        if inner.retired || inner.reconnect_at.is_some_and(|t| c.created < t) {
            drop(inner);
            self.discard(c);
            return;
        }
        if inner.waiters.is_empty() {
            inner.idle.push(c);
            return;
        }
        while let Some((w, _)) = inner.waiters.pop_front() {
            match w.tx.send(Grant::Conn(c)) {
                Ok(()) => return,
                Err(Grant::Conn(back)) => c = back,
                Err(Grant::Slot) => unreachable!("we sent a connection"),
            }
        }
        inner.idle.push(c);
    }

    /// Closes a connection and frees its slot (to a waiter, who may open a new one).
    pub fn discard(&self, c: Box<ServerConn>) {
        tracing::debug!(conn = c.id, pool = %self.label(), "server connection closed");
        (*c).close();
        self.release_slot();
    }

    fn release_slot(&self) {
        let mut inner = self.lock();
        while let Some((w, _)) = inner.waiters.pop_front() {
            if w.tx.send(Grant::Slot).is_ok() {
                inner.connecting += 1;
                return;
            }
        }
        inner.open = inner.open.saturating_sub(1);
        drop(inner);
        self.release_limits();
    }

    /// A snapshot of sizes for the admin port.
    pub fn snapshot(&self) -> PoolSnapshot {
        let inner = self.lock();
        let now = Instant::now();
        PoolSnapshot {
            sv_idle: inner.idle.len(),
            sv_active: inner.open - inner.idle.len() - inner.connecting,
            sv_login: inner.connecting,
            cl_waiting: inner.waiters.len(),
            maxwait: inner.waiters.front().map_or(Duration::ZERO, |(_, t)| now - *t),
        }
    }

    /// `user@database/backend`, for logs (never a password, never a host).
    pub fn label(&self) -> String {
        let spec = self.spec.load();
        format!("{}@{}/{}", spec.user.name, spec.database, spec.backend_name)
    }
}

/// How often a client blocked by a database or user limit looks again, besides being woken.
const LIMIT_RECHECK: Duration = Duration::from_millis(50);

/// Failures that go away by themselves when a server restarts: refused or reset connections, and
/// PostgreSQL saying it is starting up or shutting down.
fn retryable(e: &crate::server::ServerError) -> bool {
    use crate::server::ServerError;
    match e {
        ServerError::Connect(_) | ServerError::Closed | ServerError::Io(_) => true,
        ServerError::Refused { code, .. } => matches!(code.as_str(), "57P01" | "57P02" | "57P03"),
        _ => false,
    }
}

/// Pool sizes at one instant.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct PoolSnapshot {
    /// Idle server connections.
    pub sv_idle: usize,
    /// Leased server connections.
    pub sv_active: usize,
    /// Connections being opened.
    pub sv_login: usize,
    /// Clients waiting for a connection.
    pub cl_waiting: usize,
    /// Age of the oldest waiter.
    #[serde(serialize_with = "crate::stats::ser_secs")]
    pub maxwait: Duration,
}
