//! LISTEN/NOTIFY in transaction mode: one dedicated listener connection per (user, database)
//! runs every LISTEN its clients asked for, and fans each NotificationResponse out to the clients
//! subscribed to that channel. Clients keep no server connection while they wait for events.

use bytes::{Bytes, BytesMut};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

use crate::pool::Pool;
use crate::server::ServerConn;
use crate::wire::{frame, messages, tag};

/// Notifications queued per client before new ones are dropped (a client that never reads).
const CLIENT_QUEUE: usize = 1024;

/// What a client session receives: whole NotificationResponse frames.
pub type NotifyRx = mpsc::Receiver<Bytes>;

/// A subscriber: the client's id and where to send its notifications.
#[derive(Clone)]
struct Subscriber {
    tx: mpsc::Sender<Bytes>,
}

/// Commands to a listener task, executed in order.
enum Cmd {
    Listen(String),
    Unlisten(String),
    /// Answered once every command before it has run (a client's LISTEN is acknowledged only
    /// when the shared connection really listens, or NOTIFYs sent right after could be missed).
    Ack(tokio::sync::oneshot::Sender<()>),
}

/// Answered after a round trip on the listener connection: every notification committed before
/// it was asked for has been delivered by then (PostgreSQL sends pending notifications when it
/// reads the next query, before running it). One round trip answers all that are waiting.
type Barrier = tokio::sync::oneshot::Sender<()>;

/// One listener connection's channels and subscribers.
struct Listener {
    channels: HashMap<String, HashSet<u64>>,
    cmds: mpsc::UnboundedSender<Cmd>,
    barriers: mpsc::UnboundedSender<Barrier>,
}

/// All listeners, and every subscribed client.
#[derive(Default)]
pub struct NotifyHub {
    listeners: Mutex<HashMap<usize, Listener>>,
    clients: Mutex<HashMap<u64, Subscriber>>,
}

/// Identity of a pool for the hub (its address in memory: pools live as long as the process).
fn pool_key(pool: &Arc<Pool>) -> usize {
    Arc::as_ptr(pool) as usize
}

impl NotifyHub {
    /// Subscribes client `id` to `channel` through `pool`'s listener; returns the receiver to
    /// poll if this is the client's first subscription, and one that fires once the shared
    /// connection listens.
    pub fn listen(
        self: &Arc<Self>,
        pool: &Arc<Pool>,
        id: u64,
        channel: &str,
    ) -> (Option<NotifyRx>, tokio::sync::oneshot::Receiver<()>) {
        let mut rx = None;
        if let Ok(mut clients) = self.clients.lock() {
            clients.entry(id).or_insert_with(|| {
                let (tx, r) = mpsc::channel(CLIENT_QUEUE);
                rx = Some(r);
                Subscriber { tx }
            });
        }
        let mut listeners = self.listeners.lock().unwrap_or_else(|e| e.into_inner());
        let l = listeners.entry(pool_key(pool)).or_insert_with(|| {
            let (cmds, rx) = mpsc::unbounded_channel();
            let (barriers, brx) = mpsc::unbounded_channel();
            tokio::spawn(run_listener(self.clone(), pool.clone(), rx, brx));
            Listener { channels: HashMap::new(), cmds, barriers }
        });
        let subs = l.channels.entry(channel.to_string()).or_default();
        if subs.is_empty() {
            let _ = l.cmds.send(Cmd::Listen(channel.to_string()));
        }
        subs.insert(id);
        let (ack, acked) = tokio::sync::oneshot::channel();
        let _ = l.cmds.send(Cmd::Ack(ack));
        (rx, acked)
    }

    /// Unsubscribes client `id` from `channel` (`None`: from every channel).
    pub fn unlisten(&self, id: u64, channel: Option<&str>) {
        let mut listeners = self.listeners.lock().unwrap_or_else(|e| e.into_inner());
        for l in listeners.values_mut() {
            let cmds = l.cmds.clone();
            l.channels.retain(|ch, subs| {
                if channel.is_none_or(|c| c == ch) {
                    subs.remove(&id);
                }
                if subs.is_empty() {
                    let _ = cmds.send(Cmd::Unlisten(ch.clone()));
                }
                !subs.is_empty()
            });
        }
    }

    /// Asks each listener connection client `id` subscribes through for a [`Barrier`]; the
    /// receivers fire once every notification committed so far has been fanned out.
    pub fn barrier(&self, id: u64) -> Vec<tokio::sync::oneshot::Receiver<()>> {
        let listeners = self.listeners.lock().unwrap_or_else(|e| e.into_inner());
        listeners
            .values()
            .filter(|l| l.channels.values().any(|subs| subs.contains(&id)))
            .filter_map(|l| {
                let (tx, rx) = tokio::sync::oneshot::channel();
                l.barriers.send(tx).ok().map(|_| rx)
            })
            .collect()
    }

    /// Forgets a client that left.
    pub fn leave(&self, id: u64) {
        self.unlisten(id, None);
        if let Ok(mut c) = self.clients.lock() {
            c.remove(&id);
        }
    }

    /// Delivers one NotificationResponse to the subscribers of its channel on `pool`.
    fn deliver(&self, pool: usize, channel: &str, f: Bytes) {
        let ids: Vec<u64> = self
            .listeners
            .lock()
            .ok()
            .and_then(|l| l.get(&pool).and_then(|l| l.channels.get(channel)).map(|s| s.iter().copied().collect()))
            .unwrap_or_default();
        let Ok(clients) = self.clients.lock() else { return };
        for id in ids {
            if let Some(s) = clients.get(&id) {
                if s.tx.try_send(f.clone()).is_err() {
                    tracing::warn!(client = id, "notification dropped: the client is not reading them");
                }
            }
        }
    }

    /// Channels listened to, for the admin port.
    pub fn channels(&self) -> usize {
        self.listeners.lock().map(|l| l.values().map(|l| l.channels.len()).sum()).unwrap_or(0)
    }
}

/// The listener task: (re)connects, applies LISTEN/UNLISTEN commands, and fans out notifications.
async fn run_listener(
    hub: Arc<NotifyHub>,
    pool: Arc<Pool>,
    mut cmds: mpsc::UnboundedReceiver<Cmd>,
    mut barriers: mpsc::UnboundedReceiver<Barrier>,
) {
    let key = pool_key(&pool);
    let mut listening: HashSet<String> = HashSet::new();
    loop {
        let spec = pool.spec.load_full();
        let mut conn = match ServerConn::connect(&spec, 0, 0).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(pool = %pool.label(), "LISTEN connection failed: {e}; retrying");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                continue;
            }
        };
        for ch in &listening {
            let _ = run(&mut conn, &format!("LISTEN {}", quote_ident(ch)), &hub, key).await;
        }
        loop {
            tokio::select! {
                cmd = cmds.recv() => {
                    let Some(cmd) = cmd else { return };
                    let sql = match cmd {
                        Cmd::Listen(ch) => { let q = format!("LISTEN {}", quote_ident(&ch)); listening.insert(ch); q }
                        Cmd::Unlisten(ch) => { let q = format!("UNLISTEN {}", quote_ident(&ch)); listening.remove(&ch); q }
                        Cmd::Ack(tx) => { let _ = tx.send(()); continue; }
                    };
                    if run(&mut conn, &sql, &hub, key).await.is_err() {
                        break;
                    }
                }
                Some(first) = barriers.recv() => {
                    let mut waiting = vec![first];
                    while let Ok(b) = barriers.try_recv() {
                        waiting.push(b);
                    }
                    let ok = run(&mut conn, "", &hub, key).await.is_ok();
                    for b in waiting {
                        let _ = b.send(());
                    }
                    if !ok {
                        break;
                    }
                }
                f = conn.read_frame() => match f {
                    Ok(f) if f[0] == tag::NOTIFICATION_RESPONSE => {
                        if let Some(ch) = notification_channel(&f) {
                            hub.deliver(key, &ch, f.freeze());
                        }
                    }
                    Ok(_) => {}
                    Err(_) => break,
                },
            }
        }
        tracing::warn!(pool = %pool.label(), "LISTEN connection lost; reconnecting");
    }
}

/// Runs `sql` (empty: a bare round trip) on the listener connection, fanning out every
/// notification that arrives meanwhile instead of dropping it.
async fn run(conn: &mut ServerConn, sql: &str, hub: &NotifyHub, key: usize) -> Result<(), crate::server::ServerError> {
    let mut q = BytesMut::new();
    messages::put_query(&mut q, sql);
    tokio::io::AsyncWriteExt::write_all(&mut conn.stream, &q).await?;
    loop {
        let f = conn.read_frame().await?;
        match f[0] {
            tag::NOTIFICATION_RESPONSE => {
                if let Some(ch) = notification_channel(&f) {
                    hub.deliver(key, &ch, f.freeze());
                }
            }
            tag::READY_FOR_QUERY => return Ok(()),
            _ => {}
        }
    }
}

/// A NotificationResponse whose sender pid is `pid` instead.
pub fn with_pid(f: &[u8], pid: i32) -> Bytes {
    let mut out = BytesMut::from(f);
    if out.len() >= 9 {
        out[5..9].copy_from_slice(&pid.to_be_bytes());
    }
    out.freeze()
}

/// The sender pid of a NotificationResponse.
pub fn sender_pid(f: &[u8]) -> Option<i32> {
    let b = f.get(5..9)?;
    Some(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

/// The channel name of a NotificationResponse (pid, channel, payload).
fn notification_channel(f: &[u8]) -> Option<String> {
    let body = frame::body(f).get(4..)?;
    let (ch, _) = frame::cstr(body)?;
    Some(String::from_utf8_lossy(ch).into_owned())
}

/// A channel name as a quoted identifier.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// CommandComplete + ReadyForQuery for a LISTEN/UNLISTEN answered by the proxy.
pub fn answer(out: &mut BytesMut, command: &str, status: crate::wire::TxStatus) {
    messages::put_command_complete(out, command);
    messages::put_ready_for_query(out, status);
}
