//! A session moving between processes in a binary upgrade: packed at an idle point on the old
//! process (socket + state), unpacked on the new one into a session that carries on as if
//! nothing happened — same cancel key, settings and prepared statements, no message to the
//! client.
//!
//! Only plaintext TCP and Unix-socket clients in transaction mode, between transactions, with no
//! server pinned and no LISTEN, can move: a TLS session's keys live in this process's rustls
//! state, and a pinned or session-mode client has state on its server connection, which stays
//! here. Those are closed at their next idle point with 57P01, as a drain closes them.

use bytes::{Bytes, BytesMut};
use std::os::fd::OwnedFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use super::peer::Peer;
use super::registry::SessionHandle;
use super::route::SessionPools;
use super::session::{client_slots, End, Session};
use super::state::{ClientState, RouteOverride};
use crate::auth::UserEntry;
use crate::config::PoolMode;
use crate::error::ClientError;
use crate::pool::limit::ClientSlot;
use crate::session_state::Settings;
use crate::shared::Runtime;
use crate::shared::Shared;
use crate::stream::Stream;
use crate::upgrade::message::{Handoff, Statement, Transport};
use crate::upgrade::Outgoing;
use crate::wire::tag;

/// What a client that cannot move is told at its idle point.
pub fn restarting() -> ClientError {
    ClientError::fatal("57P01", "terminating connection: pgshift is restarting, reconnect")
}

impl Session {
    /// Whether this client can move to another process now, and over which transport.
    fn movable(&self) -> Result<Transport, &'static str> {
        let transport = match &self.client {
            Stream::Plain(_) => Transport::Tcp,
            Stream::Unix(_) => Transport::Unix,
            Stream::TlsAccepted(_) | Stream::TlsConnected(_) => return Err("TLS"),
        };
        if self.pools.mode != PoolMode::Transaction {
            return Err("session pooling");
        }
        if self.state.pinned {
            return Err("pinned to a server");
        }
        if self.notify_rx.is_some() {
            return Err("LISTEN");
        }
        if self.attached.is_some() || !self.cout.is_empty() || self.cflush || !self.state.tx_status.is_idle() {
            return Err("not idle");
        }
        Ok(transport)
    }

    /// At an idle point during an upgrade: sends the client to the new process, or closes it
    /// with 57P01 if it cannot move. Gives the session back when the upgrade was abandoned.
    pub(super) async fn hand_over(self) -> Option<Session> {
        if !self.shared.handover.is_open() {
            self.handle.signals.lower(super::registry::Signals::HANDOVER);
            return Some(self);
        }
        let transport = match self.movable() {
            Ok(t) => t,
            Err(why) => {
                tracing::info!(client = self.handle.id, why, "upgrade: closing a client that cannot be handed over");
                self.finish(End::Close(restarting())).await;
                return None;
            }
        };
        let handoff = self.pack(transport);
        let (shared, id) = (self.shared.clone(), self.handle.id);
        self.shared.sessions.unregister(&self.handle);
        self.shared.notify.leave(self.handle.id);
        self.shared.stats.clients.fetch_sub(1, Ordering::Relaxed);
        let fd = match into_fd(self.client) {
            Ok(fd) => fd,
            Err(e) => {
                tracing::warn!(client = id, "upgrade: cannot detach a client socket: {e}");
                return None;
            }
        };
        if let Err(out) = shared.handover.send(Outgoing::Client(Box::new(handoff), fd)) {
            tracing::warn!(client = id, "upgrade: the new process is gone; the client is closed");
            refuse_returned(out);
        }
        None
    }

    /// The state that follows the client, as it travels.
    fn pack(&self, transport: Transport) -> Handoff {
        let s = &self.state;
        let w = s.writes();
        let pairs = |set: &Settings| set.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let statements = s
            .statements
            .iter()
            .map(|(name, def)| Statement { name: name.to_vec(), parse_frame: def.parse_frame.to_vec() })
            .collect();
        let now = crate::pool::cluster::mono_ms();
        Handoff {
            transport,
            user: self.user.name.clone(),
            database: self.pools.database.to_string(),
            key: self.handle.key,
            connected_at_ms: self.handle.connected_at().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64),
            xacts: self.handle.xacts.load(Ordering::Relaxed),
            startup_settings: pairs(&s.startup_settings),
            settings: pairs(&s.settings),
            statements,
            unnamed_parse: s.unnamed_parse.as_ref().map(|b| b.to_vec()),
            route: match s.route {
                RouteOverride::Auto => "auto",
                RouteOverride::Primary => "primary",
                RouteOverride::Replica => "replica",
            }
            .into(),
            track_prepared: s.track_prepared,
            skip_to_sync: self.skip_to_sync,
            wrote_ms_ago: (w.last_write_at != 0).then(|| now.saturating_sub(w.last_write_at)),
            ryw_lsn: w.ryw_lsn,
            pending: self.cin.to_vec(),
        }
    }
}

/// The socket under a plaintext client stream, detached from this process's reactor.
fn into_fd(stream: Stream) -> std::io::Result<OwnedFd> {
    match stream {
        Stream::Plain(tcp) => tcp.into_std().map(OwnedFd::from),
        Stream::Unix(unix) => unix.into_std().map(OwnedFd::from),
        Stream::TlsAccepted(_) | Stream::TlsConnected(_) => Err(std::io::Error::other("a TLS stream cannot move")),
    }
}

/// The new process's side: turns a handed-over client into a session and runs it.
pub async fn adopt(shared: Arc<Shared>, handoff: Box<Handoff>, fd: OwnedFd) {
    let _counted = super::listener::LoggedIn::adopted(shared.clone());
    let (stream, peer) = match attach_socket(handoff.transport, fd) {
        Ok(s) => s,
        Err(e) => return tracing::warn!("upgrade: cannot take over a client socket: {e}"),
    };
    let session = match Session::adopted(shared.clone(), *handoff, stream, peer) {
        Ok(s) => s,
        Err((mut stream, e)) => {
            tracing::warn!(%peer, code = %e.code, "upgrade: a handed-over client cannot be served: {}", e.message);
            let _ = tokio::io::AsyncWriteExt::write_all(&mut stream, &e.frame()).await;
            return;
        }
    };
    tracing::debug!(%peer, client = session.handle.id, "upgrade: client adopted");
    session.drive().await;
}

/// Registers a received socket with this process's reactor.
fn attach_socket(transport: Transport, fd: OwnedFd) -> std::io::Result<(Stream, Peer)> {
    match transport {
        Transport::Tcp => {
            let tcp = std::net::TcpStream::from(fd);
            tcp.set_nonblocking(true)?;
            let peer = Peer::Tcp(tcp.peer_addr()?);
            Ok((Stream::Plain(tokio::net::TcpStream::from_std(tcp)?), peer))
        }
        Transport::Unix => {
            let unix = std::os::unix::net::UnixStream::from(fd);
            unix.set_nonblocking(true)?;
            Ok((Stream::Unix(tokio::net::UnixStream::from_std(unix)?), Peer::Unix))
        }
    }
}

impl Session {
    /// A session for a client handed over by the old process: no login, no message to the client.
    fn adopted(shared: Arc<Shared>, h: Handoff, stream: Stream, peer: Peer) -> Result<Session, (Stream, ClientError)> {
        let rt = shared.runtime.load_full();
        // Trust-mode users need not be configured; the old process let this one in.
        let user = rt.users.get(&h.user).unwrap_or_else(|| Arc::new(UserEntry::new(&h.user, None, None)));
        let pools = match SessionPools::resolve(&shared, &rt, &user, &h.database) {
            Ok(p) => p,
            Err(e) => return Err((stream, e)),
        };
        let slots = match client_slots(&shared, &rt, &pools, &user.name) {
            Ok(s) => s,
            Err(e) => return Err((stream, e)),
        };
        let since = UNIX_EPOCH + Duration::from_millis(h.connected_at_ms);
        let Some(handle) = shared.sessions.adopt(h.key, pools.user.clone(), pools.database.clone(), peer, since) else {
            return Err((stream, ClientError::fatal("57P01", "pgshift restarted and cannot keep this cancel key")));
        };
        handle.xacts.store(h.xacts, Ordering::Relaxed);
        let state = unpack_state(&shared, &rt, &h);
        shared.stats.adopted.fetch_add(1, Ordering::Relaxed);
        shared.stats.clients.fetch_add(1, Ordering::Relaxed);
        Ok(Session::assemble(Parts {
            shared,
            handle,
            client: stream,
            cin: BytesMut::from(&h.pending[..]),
            user,
            client_slots: slots,
            rt,
            pools,
            state,
            skip_to_sync: h.skip_to_sync,
        }))
    }
}

/// The client's state rebuilt here: statements interned in this process's registry under new
/// proxy-wide names (each server gets them prepared on first use, as for any client).
fn unpack_state(shared: &Shared, rt: &crate::shared::Runtime, h: &Handoff) -> ClientState {
    let settings = |pairs: &[(String, String)]| {
        let mut s = Settings::new();
        for (k, v) in pairs {
            s.insert(k.clone(), v.clone());
        }
        s
    };
    let scope = super::statements::scope(&h.database, &h.user, &settings(&h.settings));
    let statements = h
        .statements
        .iter()
        .filter_map(|st| {
            let (sql, tail) = parse_parts(&st.parse_frame)?;
            let class = super::request::classify(shared, rt, &sql);
            let def = shared.prepared.intern(&scope, tail, || class);
            Some((Bytes::copy_from_slice(&st.name), def))
        })
        .collect();
    let unnamed_parse: Option<Box<[u8]>> = h.unnamed_parse.as_deref().map(Into::into);
    let unnamed = unnamed_parse
        .as_ref()
        .and_then(|p| super::request::sql_of(tag::PARSE, p).map(|sql| super::request::classify(shared, rt, &sql)));
    let now = crate::pool::cluster::mono_ms();
    let last_write_at = h.wrote_ms_ago.map_or(0, |ago| now.saturating_sub(ago).max(1));
    ClientState {
        startup_settings: settings(&h.startup_settings),
        settings: settings(&h.settings),
        statements,
        unnamed,
        unnamed_parse,
        tx_status: crate::wire::TxStatus::Idle,
        route: RouteOverride::parse(&h.route),
        track_prepared: h.track_prepared,
        writes: (last_write_at != 0).then(|| {
            Box::new(super::state::WriteMarks {
                last_write_at,
                ryw_lsn: h.ryw_lsn,
                target_ryw: super::state::TargetRyw::WroteAt(last_write_at),
                ..Default::default()
            })
        }),
        ..ClientState::default()
    }
}

/// The SQL text of a Parse frame and the body after the statement name (text and types).
fn parse_parts(frame: &[u8]) -> Option<(String, &[u8])> {
    if frame.first() != Some(&tag::PARSE) || frame.len() < 5 {
        return None;
    }
    let body = &frame[5..];
    let (_, tail) = crate::wire::frame::cstr(body)?;
    let sql = super::request::sql_of(tag::PARSE, frame)?.into_owned();
    Some((sql, tail))
}

/// When a handover could not send a client (the new process died): the old process cannot
/// serve it any more either (its session is gone), so it is told to reconnect.
pub fn refuse_returned(out: Outgoing) {
    use std::io::Write;
    let fd = match out {
        Outgoing::Client(_, fd) | Outgoing::Fresh { fd, .. } => fd,
    };
    let mut s = std::fs::File::from(fd);
    let _ = s.write_all(&restarting().frame());
}

/// What a session is made of, for sessions that did not log in here (handed over).
struct Parts {
    shared: Arc<Shared>,
    handle: Arc<SessionHandle>,
    client: crate::stream::Stream,
    cin: BytesMut,
    user: Arc<UserEntry>,
    client_slots: [ClientSlot; 2],
    rt: Arc<Runtime>,
    pools: Arc<SessionPools>,
    state: ClientState,
    skip_to_sync: bool,
}

impl Session {
    /// A session from its parts (a client handed over by the process this one upgraded).
    fn assemble(p: Parts) -> Session {
        Session {
            shared: p.shared,
            handle: p.handle,
            client: p.client,
            cin: p.cin,
            cout: BytesMut::new(),
            cflush: false,
            user: p.user,
            _client_slots: p.client_slots,
            rt: p.rt,
            pools: p.pools,
            state: p.state,
            attached: None,
            skip_to_sync: p.skip_to_sync,
            notify_rx: None,
            read_retried: false,
        }
    }
}
