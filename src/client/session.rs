//! One client's life after login: wait for a request, route it, take a server, relay until the
//! transaction ends, give the server back; and on the way out, leave the server clean.

use bytes::{Buf, BytesMut};
use std::pin::{pin, Pin};
use std::sync::Arc;
use tokio::io::AsyncWriteExt;

use super::handshake::Login;
use super::io::{poll_event, Event, Side};
use super::registry::{ClientState as Activity, SessionHandle, Signals};
use super::request::{self, Request};
use super::route::SessionPools;
use super::state::{Attached, ClientState, RouteOverride};
use super::timers::OptionalSleep;
use crate::auth::UserEntry;
use crate::config::PoolMode;
use crate::error::ClientError;
use crate::pool::limit::ClientSlot;
use crate::session_state::{guc_name, startup_settings, unquote_literal};
use crate::shared::{Runtime, Shared};
use crate::wire::{messages, TxStatus};

/// How the attached phase ended without ending the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Relayed {
    /// The transaction is over: give the server back.
    Released,
    /// A replica failed before replying: route the request again.
    Retry,
}

/// How a session ends.
#[derive(Debug)]
pub enum End {
    /// The client sent Terminate or closed its socket.
    ClientGone,
    /// We close the client, telling it why (FATAL).
    Close(ClientError),
    /// A binary upgrade: the client moves to the new process (or is closed if it cannot).
    Handover,
}

/// A logged-in client.
pub struct Session {
    pub(super) shared: Arc<Shared>,
    pub(super) handle: Arc<SessionHandle>,
    pub(super) client: crate::stream::Stream,
    /// Bytes from the client not yet forwarded.
    pub(super) cin: BytesMut,
    /// Bytes for the client not yet written.
    pub(super) cout: BytesMut,
    /// The client owes a TLS flush.
    pub(super) cflush: bool,
    pub(super) user: Arc<UserEntry>,
    /// Places under `max_db_client_connections` and `max_user_client_connections`, held while
    /// the client is connected.
    pub(super) _client_slots: [ClientSlot; 2],
    pub(super) rt: Arc<Runtime>,
    pub(super) pools: Arc<SessionPools>,
    pub(super) state: ClientState,
    /// The server held now (boxed: it moves between the session's steps as a pointer).
    pub(super) attached: Option<Box<Attached>>,
    /// Drop frames until the next Sync (after an error answered in place of an extended batch).
    pub(super) skip_to_sync: bool,
    /// Notifications for the channels this client LISTENs to (transaction mode fan-out).
    pub(super) notify_rx: Option<crate::notify::NotifyRx>,
    /// The read being retried lost its replica connection once: it goes to the primary now
    /// (not to another replica, which a read that ends its own backend would end again). Only
    /// this read is affected; the health probe speaks for the node.
    pub(super) read_retried: bool,
}

/// Starts the session, or tells the client why not.
pub(super) async fn open(shared: Arc<Shared>, login: Box<Login>) -> Option<Session> {
    let peer = login.peer;
    match Session::start(shared.clone(), *login).await {
        Ok(session) => {
            tracing::info!(%peer, user = %session.user.name, db = %session.pools.database, client = session.handle.id, "client connected");
            Some(session)
        }
        Err((mut stream, e)) => {
            shared.stats.login_failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            shared.stats.record_error(e.code.as_bytes());
            let _ = stream.write_all(&e.frame()).await;
            let _ = stream.flush().await;
            tracing::info!(%peer, code = %e.code, "login refused: {}", e.message);
            None
        }
    }
}

impl Session {
    /// Serves the client until it leaves, is closed, or moves to a new process.
    ///
    /// A plain fn returning an `async move` block: the session is captured once. As an `async fn`
    /// taking `mut self`, the future kept the argument and its rebinding side by side, 528 bytes
    /// more in every client's task.
    #[allow(clippy::manual_async_fn)]
    pub(super) fn drive(mut self) -> impl std::future::Future<Output = ()> + Send {
        async move {
            loop {
                {
                    // Scoped: how `serve` ended is not kept across the handover's await.
                    let end = self.serve().await;
                    if !matches!(end, End::Handover) {
                        return Box::pin(self.finish(end)).await;
                    }
                }
                match Box::pin(self.hand_over()).await {
                    Some(stays) => self = stays, // the upgrade was abandoned
                    None => return,
                }
            }
        }
    }

    async fn start(shared: Arc<Shared>, login: Login) -> Result<Session, (crate::stream::Stream, ClientError)> {
        let Login { mut stream, rbuf, user, database, mut params, peer } = login;
        if let Err(v) = crate::session_state::canonical_startup_encoding(&mut params) {
            return Err((stream, ClientError::invalid_parameter("client_encoding", &v)));
        }
        let rt = shared.runtime.load_full();
        let pools = match SessionPools::resolve(&shared, &rt, &user, &database) {
            Ok(p) => p,
            Err(e) => return Err((stream, e)),
        };
        let client_slots = match client_slots(&shared, &rt, &pools, &user.name) {
            Ok(s) => s,
            Err(e) => return Err((stream, e)),
        };
        let server_params = match pools.server_params(shared.migration.phase_of(&pools.db.server_db)).await {
            Ok(p) => p,
            Err(e) => return Err((stream, e)),
        };
        let handle = shared.sessions.register(pools.user.clone(), pools.database.clone(), peer, rt.config.fleet.id);
        let mut state = ClientState {
            tx_status: TxStatus::Idle,
            track_prepared: pools.mode == PoolMode::Transaction && rt.config.proxy.max_prepared_statements > 0,
            ..ClientState::default()
        };
        state.route = crate::wire::startup::StartupPacket::param(&params, "pgshift.route")
            .map_or(RouteOverride::Auto, RouteOverride::parse);
        // Settings equal to the server's own defaults need no replay.
        let requested = startup_settings(&params);
        if pools.mode == PoolMode::Transaction && !strings_conform(&requested) {
            shared.sessions.unregister(&handle);
            return Err((stream, ClientError::fatal("0A000", STRINGS_REFUSED)));
        }
        let mut settings = requested.clone();
        settings.retain(|k, v| {
            !server_params
                .iter()
                .any(|(pk, pv)| pk.eq_ignore_ascii_case(k) && crate::session_state::quote_literal(pv) == *v)
        });
        let settings = pools.share_settings(settings);
        if let Some(reason) =
            crate::session_state::startup_pin(&settings).filter(|_| pools.mode == PoolMode::Transaction)
        {
            state.pinned = true;
            shared.stats.record_pin(reason);
        }
        state.startup_settings = settings.clone();
        state.settings = settings;

        let mut out = BytesMut::with_capacity(512);
        // Reported as the server reports them: what the session asked for (the value replayed on
        // every server it lands on), else the server's own value.
        for (k, v) in server_params.iter() {
            let asked = requested.get(&guc_name(k)).and_then(|lit| unquote_literal(lit));
            messages::put_parameter_status(&mut out, k.as_bytes(), asked.as_deref().unwrap_or(v).as_bytes());
        }
        messages::put_backend_key_data(&mut out, handle.key.0, handle.key.1);
        messages::put_ready_for_query(&mut out, TxStatus::Idle);
        if stream.write_all(&out).await.is_err() {
            shared.sessions.unregister(&handle);
            return Err((stream, ClientError::fatal("08006", "client went away")));
        }
        shared.stats.logins.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        shared.stats.clients.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(Session {
            shared,
            handle,
            client: stream,
            cin: rbuf,
            cout: BytesMut::new(),
            cflush: false,
            user,
            _client_slots: client_slots,
            rt,
            pools,
            state,
            attached: None,
            skip_to_sync: false,
            notify_rx: None,
            read_retried: false,
        })
    }

    /// The request loop: one iteration per transaction (or per request outside one).
    async fn serve(&mut self) -> End {
        loop {
            let req = match self.next_request().await {
                Ok(r) => r,
                Err(end) => return end,
            };
            if req.terminate {
                return End::ClientGone;
            }
            if self.skip_to_sync {
                if req.len == 0 {
                    // A huge Query the server would discard: it cannot be skipped without reading it.
                    return End::Close(ClientError::protocol(
                        "a large Query arrived while an extended-protocol batch awaited its Sync",
                    ));
                }
                self.skip_request(req);
                continue;
            }
            if self.drop_stray_copy(req) || self.answer_locally(req) {
                continue;
            }
            // Boxed: the attached phase's state exists only while a transaction runs, so the task
            // of an idle client stays small (one short-lived allocation per transaction). The
            // request is not held across this loop's awaits: it goes into the box.
            let relayed = match Box::pin(self.transaction(req)).await {
                Ok(Some(relayed)) => relayed,
                Ok(None) => continue,
                Err(end) => return end,
            };
            match relayed {
                Relayed::Released => {
                    self.release();
                    if self.notify_rx.is_some() {
                        Box::pin(self.own_notifications_first()).await;
                    }
                }
                Relayed::Retry => self.retry_elsewhere(),
            }
        }
    }

    /// Takes a server for the request and relays until the transaction ends; `None` when no
    /// server could be had and the client got an error in its place, or when the request was
    /// answered here after all.
    async fn transaction(&mut self, req: Request) -> Result<Option<Relayed>, End> {
        // LISTEN/UNLISTEN in transaction mode and pg_cancel_backend/pg_terminate_backend of a
        // pgshift client are answered here, after awaits of their own (boxed: they are rare).
        if (self.may_listen_locally(req) && Box::pin(self.listen_locally(req)).await)
            || (super::signal_backend::may_signal(&self.cin[..req.len.min(self.cin.len())])
                && Box::pin(self.signal_client_locally(req)).await)
        {
            return Ok(None);
        }
        if let Err(mut e) = self.attach(req).await {
            if req.len == 0 {
                e.severity = "FATAL"; // the rest of a streaming Query is still on its way
            }
            if e.is_fatal() {
                return Err(End::Close(e));
            }
            self.answer_in_place(req, &e);
            return Ok(None);
        }
        self.relay().await.map(Some)
    }

    /// Flushes output, then waits until a whole request is buffered.
    async fn next_request(&mut self) -> Result<Request, End> {
        self.handle.set_state(Activity::Idle);
        let idle_timeout = self.rt.config.proxy.client_idle_timeout.enabled();
        let mut idle = OptionalSleep::new(idle_timeout);
        loop {
            self.write_client_now()?;
            if self.cout.is_empty() && !self.cflush {
                // A kill takes effect before the next request, even if that request is already
                // readable (I/O is polled before signals).
                if self.handle.signals.is_set(Signals::KILL) {
                    return Err(End::Close(ClientError::fatal(
                        "57P01",
                        "terminating connection due to administrator command",
                    )));
                }
                if self.handle.signals.is_set(Signals::HANDOVER) {
                    return Err(End::Handover);
                }
                if self.shared.is_draining() {
                    return Err(End::Close(ClientError::fatal(
                        "57P01",
                        "terminating connection: pgshift is shutting down",
                    )));
                }
                match request::scan(&self.cin, self.rt.config.proxy.max_packet_size) {
                    Ok(Some(r)) if r.complete => return Ok(r),
                    Ok(Some(r)) => {
                        if !self.read_now()? {
                            return Ok(r); // the client stopped without a boundary: it waits for us
                        }
                        continue;
                    }
                    Ok(None) => {}
                    Err(e) => return Err(End::Close(ClientError::from_wire(&e))),
                }
                self.release_idle_buffers();
            }
            // Captures the session and the timer only: what every idle client's task holds.
            let ev = std::future::poll_fn(|cx| self.poll_idle(cx, idle.as_mut())).await;
            match ev {
                Event::Notification(Some(f)) => self.push_notification(&f),
                Event::Notification(None) => self.notify_rx = None,
                Event::ClientRead(Ok(0)) | Event::ClientRead(Err(_)) => return Err(End::ClientGone),
                Event::ClientRead(Ok(_)) => {}
                Event::ClientWrote(r) => self.wrote_client(r)?,
                Event::ClientFlushed(r) => {
                    r.map_err(|_| End::ClientGone)?;
                    self.cflush = false;
                }
                Event::Signal(f) if f & Signals::KILL != 0 => {
                    return Err(End::Close(ClientError::fatal(
                        "57P01",
                        "terminating connection due to administrator command",
                    )))
                }
                Event::Signal(f) if f & Signals::DRAIN != 0 => {
                    return Err(End::Close(ClientError::fatal(
                        "57P01",
                        "terminating connection: pgshift is shutting down",
                    )))
                }
                Event::Signal(_) => {} // HANDOVER: the loop's top hands the client over
                Event::Other(_) => {
                    return Err(End::Close(ClientError::fatal(
                        "57P05",
                        "client_idle_timeout: connection closed after being idle",
                    )))
                }
                _ => {}
            }
        }
    }

    /// One poll of the wait for the next request: the client's socket both ways, the signals,
    /// notifications and `idle` (`client_idle_timeout`).
    fn poll_idle(&mut self, cx: &mut std::task::Context<'_>, idle: Pin<&mut OptionalSleep>) -> std::task::Poll<Event> {
        // A handover waits for the client's output to be flushed (then the loop's top moves it).
        let handover = if self.cout.is_empty() && !self.cflush { Signals::HANDOVER } else { 0 };
        let mut client = Side {
            stream: &mut self.client,
            rbuf: &mut self.cin,
            wbuf: &mut self.cout,
            read: true,
            flush: self.cflush,
            chunk: super::io::CLIENT_CHUNK,
        };
        let mut extra: [Pin<&mut (dyn std::future::Future<Output = ()> + Send)>; 1] = [idle];
        let signals = (&self.handle.signals, Signals::KILL | Signals::DRAIN | handover);
        poll_event(cx, &mut client, None, self.notify_rx.as_mut(), signals, &mut extra)
    }

    /// An idle client keeps no buffers: they are allocated again when it sends something.
    /// This is what keeps thousands of idle clients cheap (reads wait for readiness first).
    /// They go to this thread's spares, so the next request anywhere on it allocates nothing.
    fn release_idle_buffers(&mut self) {
        if self.cin.is_empty() && self.cin.capacity() > 0 && !self.client.is_tls() {
            super::bufpool::give(&mut self.cin);
        }
        if self.cout.is_empty() && self.cout.capacity() > 0 {
            super::bufpool::give(&mut self.cout);
        }
    }

    /// Reads whatever the client has already sent, without waiting; true if anything came.
    fn read_now(&mut self) -> Result<bool, End> {
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        if self.cin.capacity() - self.cin.len() < 1024 {
            self.cin.reserve(16 * 1024);
        }
        let read = pin!(tokio::io::AsyncReadExt::read_buf(&mut self.client, &mut self.cin));
        match std::future::Future::poll(read, &mut cx) {
            std::task::Poll::Ready(Ok(0)) | std::task::Poll::Ready(Err(_)) => Err(End::ClientGone),
            std::task::Poll::Ready(Ok(_)) => Ok(true),
            std::task::Poll::Pending => Ok(false),
        }
    }

    /// Writes the client's pending output once without waiting; the bytes written. The answer
    /// the next poll would report as its first event costs no turn of the caller's loop this
    /// way; what the socket cannot take now is left to that poll ([`super::io::write_now`]).
    pub(super) fn write_client_now(&mut self) -> Result<usize, End> {
        if self.cout.is_empty() {
            return Ok(0);
        }
        match super::io::write_now(&mut self.client, &self.cout) {
            Some(r) => {
                let n = *r.as_ref().unwrap_or(&0);
                self.wrote_client(r)?;
                Ok(n)
            }
            None => Ok(0),
        }
    }

    pub(super) fn wrote_client(&mut self, r: std::io::Result<usize>) -> Result<(), End> {
        let n = r.map_err(|_| End::ClientGone)?;
        if n == 0 {
            return Err(End::ClientGone);
        }
        self.cout.advance(n);
        if self.client.is_tls() {
            self.cflush = true;
        }
        Ok(())
    }
}

/// The client's places under the client limits of its database and user, or 53300 naming the
/// limit it would pass.
pub(super) fn client_slots(
    shared: &Shared,
    rt: &Runtime,
    pools: &SessionPools,
    user: &str,
) -> Result<[ClientSlot; 2], ClientError> {
    let limits = &shared.pools.limits;
    let db = limits.db_clients(&pools.db.name, rt.max_db_client_connections(&pools.db));
    let by_user = limits.user_clients(user, rt.max_user_client_connections(user));
    let db_slot = db.enter().map_err(|l| ClientError::too_many_clients(&l))?;
    let user_slot = by_user.enter().map_err(|l| ClientError::too_many_clients(&l))?;
    Ok([db_slot, user_slot])
}

/// The tag of the last whole frame in a buffer of whole frames.
pub(super) trait LastFrame {
    fn last_frame_tag(&self) -> Option<u8>;
}

impl LastFrame for BytesMut {
    fn last_frame_tag(&self) -> Option<u8> {
        let mut at = 0;
        let mut last = None;
        while let Ok(Some((t, total))) = crate::wire::frame::complete_frame(&self[at..]) {
            last = Some(t);
            at += total;
        }
        last
    }
}

/// Why a transaction-mode login asking for `standard_conforming_strings` off or a client-only
/// encoding is refused.
const STRINGS_REFUSED: &str = "standard_conforming_strings = off and the client-only encodings (SJIS, BIG5, GBK, \
     GB18030, JOHAB, UHC, SHIFT_JIS_2004) are not supported in transaction pooling: pgshift must read \
     statements as the server does";

/// Whether the startup settings let pgshift read statements as the server does: with
/// `standard_conforming_strings` off, or a client-only encoding (see [`crate::encoding::client_only`]),
/// PostgreSQL splits statements and strings differently from pgshift's lexer.
fn strings_conform(requested: &crate::session_state::Settings) -> bool {
    let conforming = requested.get("standard_conforming_strings").is_none_or(|v| {
        let v = crate::session_state::unquote_literal(v).unwrap_or_default().to_ascii_lowercase();
        ["on", "true", "yes", "1", "t", "y"].contains(&v.as_str())
    });
    conforming && !requested.get("client_encoding").is_some_and(|v| crate::encoding::client_only(v))
}
