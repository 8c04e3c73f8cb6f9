//! The accept loop: one task per client; logins in progress bounded by `max_pending_logins`
//! and each by `client_login_timeout`, logged-in clients by `max_client_conn`. The TCP listener
//! and the Unix-domain socket each run one loop; both count against the same limits.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;

use super::handshake::{self, Opening};
use super::peer::Peer;
use super::session;
use crate::auth::limit::Limit;
use crate::error::ClientError;
use crate::shared::Shared;
use crate::stream::Stream;
use crate::wire::startup::{parse_startup, StartupPacket};

/// Client sockets against the limits: those still logging in (bounded by `max_pending_logins`)
/// apart from those logged in (bounded by `max_client_conn`), so sockets that never finish a
/// login cannot take the places of clients that do.
#[derive(Default)]
pub struct ConnCount {
    logging_in: AtomicUsize,
    logged_in: AtomicUsize,
}

impl ConnCount {
    /// Open client sockets, logged in or not.
    pub fn get(&self) -> usize {
        self.logging_in() + self.logged_in()
    }

    /// Sockets still in their opening (TLS, startup, authentication), refused ones included.
    pub fn logging_in(&self) -> usize {
        self.logging_in.load(Ordering::Relaxed)
    }

    /// Logged-in clients (sessions and console), against `max_client_conn`.
    pub fn logged_in(&self) -> usize {
        self.logged_in.load(Ordering::Relaxed)
    }
}

/// One socket counted as logging in; gives its place back when dropped.
pub struct Slot {
    shared: Arc<Shared>,
}

/// One client counted as logged in (against `max_client_conn`); gives its place back when
/// dropped. A pointer wide: every idle client's task holds one.
pub struct LoggedIn {
    shared: Arc<Shared>,
}

impl Slot {
    /// Counts a new socket as logging in; returns it with the number logging in now.
    fn logging_in(shared: Arc<Shared>) -> (Slot, usize) {
        let n = shared.conn_count.logging_in.fetch_add(1, Ordering::Relaxed) + 1;
        (Slot { shared }, n)
    }

    /// Moves the socket to the logged-in count; `Err` (still logging in) if `max` are logged in.
    fn log_in(self, max: usize) -> Result<LoggedIn, Slot> {
        let c = &self.shared.conn_count;
        if c.logged_in.fetch_add(1, Ordering::Relaxed) >= max {
            c.logged_in.fetch_sub(1, Ordering::Relaxed);
            return Err(self);
        }
        Ok(LoggedIn { shared: self.shared.clone() }) // `self` leaves the logging-in count
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.shared.conn_count.logging_in.fetch_sub(1, Ordering::Relaxed);
    }
}

impl LoggedIn {
    /// A client handed over by the process this one upgrades: counted as logged in, even past
    /// `max_client_conn` (the old process let it in under the same limit; it is not refused now).
    pub fn adopted(shared: Arc<Shared>) -> LoggedIn {
        shared.conn_count.logged_in.fetch_add(1, Ordering::Relaxed);
        LoggedIn { shared }
    }
}

impl Drop for LoggedIn {
    fn drop(&mut self) {
        self.shared.conn_count.logged_in.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Where clients connect.
pub enum ClientListener {
    /// `[proxy] listen`.
    Tcp(TcpListener),
    /// `[proxy] unix_socket_dir`.
    Unix(UnixListener),
}

impl ClientListener {
    /// The next client, as a stream ready for its opening and its address.
    async fn accept(&self) -> std::io::Result<(Stream, Peer)> {
        match self {
            ClientListener::Tcp(l) => {
                let (tcp, peer) = l.accept().await?;
                let _ = tcp.set_nodelay(true);
                Ok((Stream::Plain(tcp), Peer::Tcp(peer)))
            }
            ClientListener::Unix(l) => Ok((Stream::Unix(l.accept().await?.0), Peer::Unix)),
        }
    }
}

impl ClientListener {
    /// A connection already queued, without waiting; `None` when the queue is empty.
    fn accept_queued(&self) -> Option<(std::os::fd::OwnedFd, bool)> {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let detached = match self {
            ClientListener::Tcp(l) => match l.poll_accept(&mut cx) {
                std::task::Poll::Ready(Ok((tcp, _))) => tcp.into_std().map(|s| (s.into(), false)),
                _ => return None,
            },
            ClientListener::Unix(l) => match l.poll_accept(&mut cx) {
                std::task::Poll::Ready(Ok((unix, _))) => unix.into_std().map(|s| (s.into(), true)),
                _ => return None,
            },
        };
        detached.ok()
    }

    /// During a binary upgrade, once this loop stops accepting: the connections still queued on
    /// the socket go to the new process unread, instead of being reset when the socket closes.
    fn pass_queue(&self, shared: &Shared) {
        let mut passed = 0;
        while let Some((fd, unix)) = self.accept_queued() {
            if let Err(out) = shared.handover.send(crate::upgrade::Outgoing::Fresh { unix, fd }) {
                super::handoff::refuse_returned(out);
                break;
            }
            passed += 1;
        }
        if passed > 0 {
            tracing::info!(passed, "upgrade: passed queued connections to the new process");
        }
    }
}

/// Accepts clients until `stop` turns true.
pub async fn serve(shared: Arc<Shared>, listener: ClientListener, mut stop: watch::Receiver<bool>) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.wait_for(|s| *s) => {
                if shared.handover.is_open() {
                    listener.pass_queue(&shared);
                }
                return;
            }
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        admit(&shared, stream, peer);
    }
}

/// A connection the process this one upgrades had accepted but not read (its listen queue):
/// served here as if accepted here.
pub fn admit_passed(shared: &Arc<Shared>, fd: std::os::fd::OwnedFd, unix: bool) -> std::io::Result<()> {
    let (stream, peer) = if unix {
        let s = std::os::unix::net::UnixStream::from(fd);
        s.set_nonblocking(true)?;
        (Stream::Unix(tokio::net::UnixStream::from_std(s)?), Peer::Unix)
    } else {
        let s = std::net::TcpStream::from(fd);
        s.set_nonblocking(true)?;
        let peer = Peer::Tcp(s.peer_addr()?);
        let tcp = tokio::net::TcpStream::from_std(s)?;
        let _ = tcp.set_nodelay(true);
        (Stream::Plain(tcp), peer)
    };
    admit(shared, stream, peer);
    Ok(())
}

/// Counts a new connection and starts its task, or refuses it (too many logging in, or its
/// address is blocked after failed logins).
fn admit(shared: &Arc<Shared>, stream: Stream, peer: Peer) {
    let rt = shared.runtime.load();
    let (max, limit) = (rt.config.proxy.max_pending_logins, failed_login_limit(&rt));
    let (slot, pending) = Slot::logging_in(shared.clone());
    let refusal = if pending > max {
        Some(ClientError::fatal("53300", "too many connections are logging in (max_pending_logins)"))
    } else if shared.failed_logins.blocked(peer.ip(), limit) {
        Some(ClientError::too_many_failed_logins(&peer.host()))
    } else {
        None
    };
    match refusal {
        Some(e) => tokio::spawn(async move {
            tracing::info!(%peer, code = %e.code, "connection refused: {}", e.message);
            refuse(&slot.shared, stream, e).await;
            drop(slot);
        }),
        None => tokio::spawn(handle(slot, stream, peer)),
    };
}

/// `[auth] max_failed_logins` per `failed_login_window`, as now configured.
fn failed_login_limit(rt: &crate::shared::Runtime) -> Limit {
    let a = &rt.config.auth;
    Limit { max: a.max_failed_logins, window: a.failed_login_window.0 }
}

/// One client connection, counted by `slot` until it ends.
///
/// A plain fn returning an `async` block that captures one pointer: the login (and a console
/// client's whole life) runs in a boxed future that is freed once the session starts, so the task
/// of an idle client holds the session and its place, and nothing of how it logged in.
#[allow(clippy::manual_async_fn)]
fn handle(slot: Slot, stream: Stream, peer: Peer) -> impl std::future::Future<Output = ()> + Send {
    let opening = Box::pin(log_in(slot, stream, peer));
    async move {
        let Some((session, slot)) = opening.await else { return };
        session.drive().await;
        drop(slot);
    }
}

/// Logs the client in and starts its session; `None` when it was refused, left, or was a
/// console client (served here to the end).
async fn log_in(slot: Slot, stream: Stream, peer: Peer) -> Option<(session::Session, LoggedIn)> {
    let shared = slot.shared.clone();
    // 0 turns the bound off, as in PgBouncer.
    let timeout =
        shared.runtime.load().config.proxy.client_login_timeout.enabled().unwrap_or(Duration::from_secs(86_400 * 365));
    // Boxed: the login's state (TLS handshake, SCRAM) is freed once it is done instead of
    // sizing the task of every idle client.
    let opening = tokio::time::timeout(timeout, Box::pin(handshake::open(&shared, stream, peer))).await;
    let mut login = match opening {
        Ok(Ok(Opening::Session(login))) => login,
        Ok(Ok(Opening::Cancelled)) => return None,
        // A client that went away by itself (a port check, an aborted TLS handshake, psql
        // closing to ask for a password) did not fail a login: only refusals count.
        Ok(Err(None)) => return None,
        Ok(Err(e)) => {
            shared.stats.login_failures.fetch_add(1, Ordering::Relaxed);
            if let Some(e) = e {
                tracing::info!(%peer, code = %e.code, "connection refused: {}", e.message);
                // Authentication failures only: not protocol errors, unknown databases or full pools.
                if e.code == "28P01" || e.code == "28000" {
                    shared.failed_logins.record(peer.ip(), failed_login_limit(&shared.runtime.load()));
                }
            }
            return None;
        }
        Err(_) => {
            shared.stats.login_failures.fetch_add(1, Ordering::Relaxed);
            tracing::info!(%peer, "client_login_timeout: closing a connection that did not log in");
            return None;
        }
    };
    // Checked once the client has logged in, as PostgreSQL counts backends, so sockets that
    // never log in cannot lock clients out.
    let slot = match slot.log_in(shared.runtime.load().config.proxy.max_client_conn) {
        Ok(logged_in) => logged_in,
        Err(_still_logging_in) => {
            shared.stats.login_failures.fetch_add(1, Ordering::Relaxed);
            let e = ClientError::fatal("53300", "sorry, too many clients already");
            tracing::info!(%peer, code = %e.code, "connection refused: {}", e.message);
            let _ = login.stream.write_all(&e.frame()).await;
            let _ = login.stream.shutdown().await;
            return None;
        }
    };
    if crate::admin::console::is_console_database(&login.database) {
        Box::pin(crate::admin::console::run(shared, *login)).await;
        return None;
    }
    Some((session::open(shared, login).await?, slot))
}

/// Reads the opening packets (declining TLS) just far enough to answer with an error, as
/// PostgreSQL does when it is full. A CancelRequest is still carried out: it is one short packet,
/// and a full proxy is when a runaway query most needs stopping.
pub async fn refuse(shared: &Shared, mut stream: Stream, e: ClientError) {
    let answer = async {
        let mut buf = bytes::BytesMut::with_capacity(256);
        loop {
            match parse_startup(&buf) {
                Ok(Some((StartupPacket::SslRequest | StartupPacket::GssEncRequest, n))) => {
                    let _ = buf.split_to(n);
                    stream.write_all(b"N").await?;
                }
                Ok(Some((StartupPacket::Cancel { pid, secret }, _))) => {
                    // Refused for the listener's limits: no connection to a fleet peer either.
                    super::handshake::forward_cancel(shared, pid, secret, handshake::Reach::Local).await;
                    return Ok(());
                }
                Ok(Some(_)) | Err(_) => break,
                Ok(None) => {
                    if stream.read_buf(&mut buf).await? == 0 {
                        return Ok(());
                    }
                }
            }
        }
        stream.write_all(&e.frame()).await?;
        stream.shutdown().await
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), answer).await;
}
