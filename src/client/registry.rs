//! Connected clients by cancel key: routes CancelRequests, and lists/kills clients for the admin port.

use rand::Rng;
use serde::Serialize;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::AsyncWriteExt;

use crate::server::CancelTarget;
use crate::wire::messages;

/// The server a client is using right now, as far as a cancel needs to know: the connection's
/// own, shared.
pub type ServerRef = Arc<CancelTarget>;

/// What became of a CancelRequest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CancelOutcome {
    /// No client has that key (or the secret is wrong): ignored, as PostgreSQL does.
    NoMatch,
    /// The client held no server, so nothing of its was running: dropped, so that it cannot
    /// reach a query of whichever client uses that server next (a wait for a server it was in
    /// has ended).
    Dropped {
        /// The client's role.
        user: String,
        /// The client's database.
        database: Arc<str>,
    },
    /// Sent to the server the client holds.
    Forwarded,
}

/// Requests to a session from outside: close now (KILL), at the next idle point (DRAIN), move
/// to a new process (HANDOVER), or stop waiting for a server (CANCEL).
/// Flags and one waker, not a Notify: a session checks them on every wait, and a Notify's waiter
/// list is locked on each registration and drop.
#[derive(Debug, Default)]
pub struct Signals {
    flags: std::sync::atomic::AtomicU8,
    waker: atomic_waker::AtomicWaker,
}

impl Signals {
    /// Close now (admin kill, shutdown).
    pub const KILL: u8 = 1;
    /// A drain started: close at the next idle point.
    pub const DRAIN: u8 = 2;
    /// A binary upgrade started: hand the client to the new process at the next idle point
    /// (or close it there, if it cannot move).
    pub const HANDOVER: u8 = 4;
    /// A CancelRequest for the client arrived: ends its wait for a server connection, if it
    /// is in one (the session lowers it before each wait).
    pub const CANCEL: u8 = 8;

    /// Raises `bit` and wakes the session.
    pub fn raise(&self, bit: u8) {
        self.flags.fetch_or(bit, Ordering::AcqRel);
        self.waker.wake();
    }

    /// Lowers `bit` again (an upgrade was abandoned: the client stays; a cancel that found no
    /// wait is forgotten before the next one).
    pub fn lower(&self, bit: u8) {
        self.flags.fetch_and(!bit, Ordering::AcqRel);
    }

    /// True if `bit` has been raised.
    pub fn is_set(&self, bit: u8) -> bool {
        self.flags.load(Ordering::Acquire) & bit != 0
    }

    /// Ready with the raised flags among `mask`.
    pub fn poll(&self, mask: u8, cx: &mut std::task::Context<'_>) -> std::task::Poll<u8> {
        let f = self.flags.load(Ordering::Acquire) & mask;
        if f != 0 {
            return std::task::Poll::Ready(f);
        }
        self.waker.register(cx.waker());
        match self.flags.load(Ordering::Acquire) & mask {
            0 => std::task::Poll::Pending,
            f => std::task::Poll::Ready(f),
        }
    }
}

/// Client activity, for the admin port.
#[repr(u8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientState {
    /// Between transactions.
    Idle = 0,
    /// Waiting for a server connection.
    Waiting = 1,
    /// Holding a server connection.
    Active = 2,
}

/// One connected client, shared between its session task, cancel requests and the admin port.
#[derive(Debug)]
pub struct SessionHandle {
    /// Process-unique id (admin port, kill).
    pub id: u64,
    /// The key we gave the client in BackendKeyData.
    pub key: (i32, i32),
    /// Role name (shared with the client's pools).
    pub user: Arc<str>,
    /// Database name.
    pub database: Arc<str>,
    /// Client address.
    pub peer: super::peer::Peer,
    /// When it logged in, in whole seconds since the Unix epoch (4 bytes, not a `SystemTime`'s
    /// 16: there is one handle per client; the admin port shows seconds).
    connected_s: u32,
    /// Requests to the session from outside (see [`Signals`]).
    pub signals: Signals,
    /// The server it holds now.
    pub server: Mutex<Option<ServerRef>>,
    state: AtomicU8,
    /// Transactions completed.
    pub xacts: AtomicU64,
}

impl SessionHandle {
    /// When it logged in.
    pub fn connected_at(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(u64::from(self.connected_s))
    }

    /// Sets the activity shown on the admin port.
    pub fn set_state(&self, s: ClientState) {
        self.state.store(s as u8, Ordering::Relaxed);
    }

    /// Current activity.
    pub fn state(&self) -> ClientState {
        match self.state.load(Ordering::Relaxed) {
            1 => ClientState::Waiting,
            2 => ClientState::Active,
            _ => ClientState::Idle,
        }
    }

    /// Records (or clears) the server in use, for cancels.
    pub fn set_server(&self, s: Option<ServerRef>) {
        if let Ok(mut g) = self.server.lock() {
            *g = s;
        }
    }
}

/// What the admin port shows of a client.
#[derive(Debug, Serialize)]
pub struct ClientInfo {
    /// Id for `/kill_client?id=`.
    pub id: u64,
    /// Role.
    pub user: String,
    /// Database.
    pub database: String,
    /// Client address.
    pub addr: String,
    /// idle | waiting | active.
    pub state: ClientState,
    /// Seconds since login.
    pub connected_secs: f64,
    /// Server connection id held, if any.
    pub server: Option<u64>,
    /// Transactions completed.
    pub xacts: u64,
}

/// The pids pgshift gives its clients start above the largest process id Linux hands out
/// (`pid_max` is at most 2^22), so a pid tells a pgshift client from a PostgreSQL backend.
pub const CLIENT_PID_FLOOR: i32 = 1 << 22;

/// Server connections listed for notification pids before closed ones are swept out (see `list_server`).
const HOLDERS_MAX: usize = 65_536;

/// All connected clients.
#[derive(Default)]
pub struct Sessions {
    by_pid: Mutex<HashMap<i32, Arc<SessionHandle>>>,
    next_id: AtomicU64,
    /// Server backend pid -> the cell holding the pid of the client that holds or last held
    /// that server (for the sender pid of notifications: the client's, which it can compare with
    /// its BackendKeyData). Listed once per server connection; a lease only stores into the cell.
    holders: Mutex<HashMap<i32, std::sync::Weak<std::sync::atomic::AtomicI32>>>,
    /// Pids of clients still on the process this one is taking over from: never given out here,
    /// since those clients arrive later with their keys.
    reserved: Mutex<std::collections::HashSet<i32>>,
}

impl Sessions {
    /// Registers a client and gives it a fresh cancel key, naming `fleet_id` when it is not 0
    /// (see [`super::fleet`] for the layout).
    pub fn register(
        &self,
        user: Arc<str>,
        database: Arc<str>,
        peer: super::peer::Peer,
        fleet_id: u16,
    ) -> Arc<SessionHandle> {
        let mut map = self.by_pid.lock().unwrap_or_else(|e| e.into_inner());
        let mut rng = rand::thread_rng();
        let reserved = self.reserved.lock().unwrap_or_else(|e| e.into_inner());
        let pid = loop {
            let p = super::fleet::new_pid(fleet_id, &mut rng);
            if !map.contains_key(&p) && !reserved.contains(&p) {
                break p;
            }
        };
        drop(reserved);
        let h = self.handle((pid, rng.gen()), user, database, peer, SystemTime::now());
        map.insert(pid, h.clone());
        h
    }

    /// Registers a client handed over by the process this one upgrades, under the key it already
    /// holds; `None` if a client here already has that pid (the key cannot move then).
    pub fn adopt(
        &self,
        key: (i32, i32),
        user: Arc<str>,
        database: Arc<str>,
        peer: super::peer::Peer,
        connected_at: SystemTime,
    ) -> Option<Arc<SessionHandle>> {
        let mut map = self.by_pid.lock().unwrap_or_else(|e| e.into_inner());
        self.reserved.lock().unwrap_or_else(|e| e.into_inner()).remove(&key.0);
        if map.contains_key(&key.0) {
            return None;
        }
        let h = self.handle(key, user, database, peer, connected_at);
        map.insert(key.0, h.clone());
        Some(h)
    }

    /// Keeps `pids` from being given out (clients of the process being upgraded).
    pub fn reserve(&self, pids: &[i32]) {
        self.reserved.lock().unwrap_or_else(|e| e.into_inner()).extend(pids.iter().copied());
    }

    /// True if `pid` belongs to a client of the process this one is taking over from.
    pub fn is_reserved(&self, pid: i32) -> bool {
        self.reserved.lock().map(|r| r.contains(&pid)).unwrap_or(false)
    }

    /// Frees every reserved pid (the old process is done handing over).
    pub fn release_reserved(&self) {
        self.reserved.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// The pids of every connected client.
    pub fn pids(&self) -> Vec<i32> {
        self.by_pid.lock().map(|m| m.keys().copied().collect()).unwrap_or_default()
    }

    fn handle(
        &self,
        key: (i32, i32),
        user: Arc<str>,
        database: Arc<str>,
        peer: super::peer::Peer,
        connected_at: SystemTime,
    ) -> Arc<SessionHandle> {
        Arc::new(SessionHandle {
            id: self.next_id.fetch_add(1, Ordering::Relaxed) + 1,
            key,
            user,
            database,
            peer,
            connected_s: connected_at
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX)),
            signals: Signals::default(),
            server: Mutex::new(None),
            state: AtomicU8::new(0),
            xacts: AtomicU64::new(0),
        })
    }

    /// The client with BackendKeyData pid `pid`.
    pub fn get(&self, pid: i32) -> Option<Arc<SessionHandle>> {
        self.by_pid.lock().ok().and_then(|m| m.get(&pid).cloned())
    }

    /// Lists a server connection's holder cell under its backend pid (once per connection).
    pub fn list_server(&self, server_pid: i32, cell: &Arc<std::sync::atomic::AtomicI32>) {
        if let Ok(mut m) = self.holders.lock() {
            if m.len() >= HOLDERS_MAX {
                m.retain(|_, w| w.strong_count() > 0); // connections closed since
            }
            m.insert(server_pid, Arc::downgrade(cell));
        }
    }

    /// The client that holds or last held server backend `server_pid`, if it is pgshift's.
    pub fn holder(&self, server_pid: i32) -> Option<i32> {
        let cell = self.holders.lock().ok().and_then(|m| m.get(&server_pid).and_then(std::sync::Weak::upgrade))?;
        Some(cell.load(Ordering::Relaxed)).filter(|&pid| pid != 0)
    }

    /// Forgets a client.
    pub fn unregister(&self, h: &SessionHandle) {
        self.by_pid.lock().unwrap_or_else(|e| e.into_inner()).remove(&h.key.0);
    }

    /// Number of connected clients.
    pub fn len(&self) -> usize {
        self.by_pid.lock().map(|m| m.len()).unwrap_or(0)
    }

    /// True when no client is connected.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every client.
    pub fn all(&self) -> Vec<Arc<SessionHandle>> {
        self.by_pid.lock().map(|m| m.values().cloned().collect()).unwrap_or_default()
    }

    /// The admin port's view.
    pub fn infos(&self) -> Vec<ClientInfo> {
        let mut v: Vec<_> = self
            .all()
            .iter()
            .map(|h| ClientInfo {
                id: h.id,
                user: h.user.to_string(),
                database: h.database.to_string(),
                addr: h.peer.to_string(),
                state: h.state(),
                connected_secs: h.connected_at().elapsed().unwrap_or_default().as_secs_f64(),
                server: h.server.lock().ok().and_then(|s| s.as_ref().map(|s| s.conn_id)),
                xacts: h.xacts.load(Ordering::Relaxed),
            })
            .collect();
        v.sort_by_key(|c| c.id);
        v
    }

    /// Asks a client's session to close; false if there is no such client.
    pub fn kill(&self, id: u64) -> bool {
        match self.all().into_iter().find(|h| h.id == id) {
            Some(h) => {
                h.signals.raise(Signals::KILL);
                true
            }
            None => false,
        }
    }

    /// Handles a CancelRequest: a matching key cancels the server query (or the pool wait).
    /// Mismatches are ignored silently, as PostgreSQL does.
    ///
    /// The server's gate is raised under the same lock the session takes to let the server go,
    /// so either the session still holds it (and the pool keeps it from other clients until the
    /// server has processed the cancel) or the cancel finds no server and is dropped.
    pub async fn cancel(&self, pid: i32, secret: i32, wait: Duration) -> CancelOutcome {
        let Some(h) = self.by_pid.lock().ok().and_then(|m| m.get(&pid).cloned()) else {
            return CancelOutcome::NoMatch;
        };
        if h.key.1 != secret {
            return CancelOutcome::NoMatch;
        }
        h.signals.raise(Signals::CANCEL);
        let server = h.server.lock().ok().and_then(|s| s.as_ref().inspect(|s| s.gate.begin()).cloned());
        let Some(s) = server else {
            return CancelOutcome::Dropped { user: h.user.to_string(), database: h.database.clone() };
        };
        // Ends the gate even if this future is dropped (the connection's login timeout).
        let _open = GateOpen(s.clone());
        if !replay_over(&s, wait).await {
            tracing::warn!(client = h.id, "cancel request dropped: the server was still taking the client's settings");
            return CancelOutcome::Dropped { user: h.user.to_string(), database: h.database.clone() };
        }
        if let Err(e) = tokio::time::timeout(wait, send_cancel(s.peer, s.key)).await.unwrap_or(Ok(())) {
            tracing::warn!(client = h.id, "forwarding a cancel request failed: {e}");
        }
        CancelOutcome::Forwarded
    }
}

/// Waits (up to `wait`) until the server has taken its client's settings, so that a cancel
/// reaches the client's query and not the replay before it; false if it never did.
async fn replay_over(s: &ServerRef, wait: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + wait;
    while s.replaying.load(Ordering::Acquire) {
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        // A replay takes a round trip or two: polling this rare path costs nothing elsewhere.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    true
}

/// Ends a cancel's hold on its server connection when dropped.
struct GateOpen(ServerRef);

impl Drop for GateOpen {
    fn drop(&mut self) {
        self.0.gate.end();
    }
}

/// Sends a CancelRequest and waits until the server closes the connection, which PostgreSQL
/// does once it has signalled the backend: from then on the cancel cannot reach a later query.
pub async fn send_cancel(peer: SocketAddr, key: (i32, i32)) -> std::io::Result<()> {
    let mut tcp = tokio::net::TcpStream::connect(peer).await?;
    tcp.write_all(&messages::cancel_request(key.0, key.1)).await?;
    let mut sink = [0u8; 64];
    while tokio::io::AsyncReadExt::read(&mut tcp, &mut sink).await? > 0 {}
    Ok(())
}
