//! The attached phase: both directions at once between a client and the server it holds, until
//! the transaction ends (give the server back) or either side goes away.
//!
//! Each turn processes whatever whole frames have arrived in both directions, then waits on one
//! poll for the next socket event. Output is written as soon as the socket takes it, so nothing
//! waits on a ReadyForQuery that a Flush will never bring.

use bytes::Buf;
use std::pin::Pin;
use std::time::Duration;

use super::expect::Expect;
use super::forward::Fwd;
use super::io::{next_event, Event, Side};
use super::registry::Signals;
use super::reply::Reply;
use super::session::{End, Relayed, Session};
use super::state::{BatchState, Outcome};
use super::timers::{RelayTimers, QUERY_TIMER};
use crate::config::PoolMode;
use crate::error::ClientError;
use crate::wire::{frame, tag, WireError};

/// Stop reading a side while this much output for the other side is pending (back-pressure).
const HIGH_WATER: usize = 256 * 1024;
/// Frames larger than this (rows, copy data) stream through without being buffered whole.
const STREAM_OVER: usize = 64 * 1024;

/// What writing ahead of the poll did.
enum WriteAhead {
    /// Nothing was pending, or no socket took any of it now (the poll waits for them).
    Nothing,
    /// Some output went out.
    Wrote,
    /// The server is gone; the attachment ends so.
    ServerGone(Relayed),
}

impl Session {
    /// Relays until the transaction ends (`Ok`) or the session must end (`Err`): each turn moves
    /// what has arrived both ways, stops at a safe point if the proxy is leaving, then waits on
    /// one poll for the next event and applies it.
    pub(super) async fn relay(&mut self) -> Result<Relayed, End> {
        let tm = self.pools.mode == PoolMode::Transaction && !self.state.pinned;
        let handle = self.handle.clone();
        // Kill always; a drain once (afterwards the safe-point check looks at it every turn).
        let mut signal_mask = Signals::KILL | Signals::DRAIN | Signals::HANDOVER;
        let idle_limit = self.rt.config.proxy.idle_transaction_timeout.enabled();
        let mut timers = RelayTimers::new(self.pools.query_timeout, idle_limit);
        loop {
            self.pump_server(tm)?;
            if self.attached.as_ref().is_some_and(|a| !a.committed.is_empty()) {
                // Boxed, like every rare await here: it would otherwise size every client's task.
                Box::pin(self.mirror_committed()).await;
            }
            if let Some(done) = self.attachment_done() {
                return Ok(done);
            }
            if let Some(e) = self.primary_moved() {
                return Err(End::Close(e));
            }
            self.pump_client(tm)?;
            if let Some(done) = self.attachment_done() {
                return Ok(done);
            }
            self.leave_at_safe_point()?;
            if !self.arm_timers(&mut timers) {
                return Ok(Relayed::Released);
            }
            // After the checks above: an attachment that ended leaves its last answer (the
            // ReadyForQuery) in `cout` for the session, which sends the client's own
            // notifications first.
            match self.write_now()? {
                WriteAhead::ServerGone(done) => return Ok(done),
                // Input held back while the output was full may move now, and a drain or
                // handover may have reached its safe point: another turn.
                WriteAhead::Wrote if self.input_buffered() || self.leaving() => continue,
                WriteAhead::Wrote | WriteAhead::Nothing => {}
            }
            let event = self.wait(&mut timers.sleeps(), (&handle.signals, signal_mask)).await;
            if let Some(done) = self.apply(event, &mut timers, &mut signal_mask)? {
                return Ok(done);
            }
        }
    }

    /// Writes what is pending both ways once, without waiting (see
    /// [`Session::write_client_now`]): a request reaches the server, and an answer the client,
    /// in the turn that produced it rather than in a turn of its own.
    #[inline]
    fn write_now(&mut self) -> Result<WriteAhead, End> {
        let mut wrote = false;
        if let Some(att) = self.attached.as_mut().filter(|a| !a.sout.is_empty()) {
            if let Some(r) = super::io::write_now(&mut att.lease.conn().stream, &att.sout) {
                if !self.wrote_server(r) {
                    return self.server_lost().map(WriteAhead::ServerGone);
                }
                wrote = true;
            }
        }
        let n = self.write_client_now()?;
        if let Some(a) = self.attached.as_mut() {
            a.bytes_out += n as u64;
        }
        Ok(if wrote || n > 0 { WriteAhead::Wrote } else { WriteAhead::Nothing })
    }

    /// pgshift drains, or hands its clients over: each turn looks for the safe point.
    fn leaving(&self) -> bool {
        self.shared.is_draining() || self.handle.signals.is_set(Signals::HANDOVER)
    }

    /// Frames are buffered on either side (the pumps stop at `HIGH_WATER` of output).
    fn input_buffered(&mut self) -> bool {
        !self.cin.is_empty() || self.attached.as_mut().is_some_and(|a| !a.lease.conn().rbuf.is_empty())
    }

    /// Ends the session at a safe point (nothing owed either way, no transaction open) when
    /// pgshift drains, or when it hands over to a new binary: a client that keeps its server
    /// between transactions (session mode, pinned) cannot move, so it is closed there too.
    #[inline]
    fn leave_at_safe_point(&self) -> Result<(), End> {
        if self.shared.is_draining() && self.idle_between_requests() {
            return Err(End::Close(ClientError::fatal("57P01", "terminating connection: pgshift is shutting down")));
        }
        if self.handle.signals.is_set(Signals::HANDOVER) && self.idle_between_requests() {
            return Err(End::Close(super::handoff::restarting()));
        }
        Ok(())
    }

    /// Arms the timers for this turn; false when no server is attached.
    #[inline]
    fn arm_timers(&mut self, timers: &mut RelayTimers) -> bool {
        let Some(att) = self.attached.as_ref() else { return false };
        // idle_transaction_timeout: the client holds a transaction open and sends nothing.
        let idle_in_tx = self.state.tx_status.in_block() && att.queue.is_empty() && self.cin.is_empty();
        timers.follow(att.req_started, idle_in_tx);
        true
    }

    /// The one poll over both sockets, the signals, notifications and `timers`, returned as is
    /// (no wrapping future), reading only where the other side has room (back-pressure).
    #[inline(always)] // one call site: folded into the loop, as the poll was before it had a name
    fn wait<'a, 'f>(
        &'a mut self,
        timers: &'a mut [Pin<&'f mut (dyn std::future::Future<Output = ()> + Send)>],
        signals: (&'a Signals, u8),
    ) -> impl std::future::Future<Output = Event> + use<'a, 'f> {
        let (client_room, server) = match self.attached.as_mut() {
            Some(att) => {
                let client_room = att.sout.len() < HIGH_WATER && room(&self.cin);
                let conn = att.lease.conn();
                let server = Side {
                    read: self.cout.len() < HIGH_WATER && room(&conn.rbuf),
                    stream: &mut conn.stream,
                    rbuf: &mut conn.rbuf,
                    wbuf: &mut att.sout,
                    flush: att.sflush,
                    chunk: super::io::SERVER_CHUNK,
                };
                (client_room, Some(server))
            }
            None => (room(&self.cin), None),
        };
        let client = Side {
            stream: &mut self.client,
            rbuf: &mut self.cin,
            wbuf: &mut self.cout,
            read: client_room,
            flush: self.cflush,
            chunk: super::io::CLIENT_CHUNK,
        };
        next_event(client, server, self.notify_rx.as_mut(), signals, timers)
    }

    /// Applies what the poll returned; `Some` when the attachment is over.
    #[inline(always)] // one call site: folded into the loop, the event is not moved
    fn apply(&mut self, event: Event, timers: &mut RelayTimers, signal_mask: &mut u8) -> Result<Option<Relayed>, End> {
        match event {
            Event::Notification(Some(f)) => self.push_notification(&f),
            Event::Notification(None) => self.notify_rx = None,
            Event::ClientRead(Ok(0)) | Event::ClientRead(Err(_)) => return Err(End::ClientGone),
            Event::ClientRead(Ok(_)) | Event::ServerRead(Ok(1..)) => {}
            Event::ServerRead(_) | Event::ServerFlushed(Err(_)) => return self.server_lost().map(Some),
            Event::ClientWrote(r) => {
                let n = *r.as_ref().unwrap_or(&0);
                self.wrote_client(r)?;
                if let Some(a) = self.attached.as_mut() {
                    a.bytes_out += n as u64;
                }
            }
            Event::ClientFlushed(r) => {
                r.map_err(|_| End::ClientGone)?;
                self.cflush = false;
            }
            Event::ServerWrote(r) => {
                if !self.wrote_server(r) {
                    return self.server_lost().map(Some);
                }
            }
            Event::ServerFlushed(Ok(())) => {
                if let Some(a) = self.attached.as_mut() {
                    a.sflush = false;
                }
            }
            Event::Signal(f) if f & Signals::KILL != 0 => {
                return Err(End::Close(ClientError::fatal(
                    "57P01",
                    "terminating connection due to administrator command",
                )))
            }
            Event::Signal(_) => *signal_mask = Signals::KILL,
            Event::Other(QUERY_TIMER) if timers.query_expired() => self.cancel_running_query(),
            Event::Other(QUERY_TIMER) => {
                // The cancel did not help (a stalled server): give up on this connection.
                if let Some(att) = self.attached.as_mut() {
                    att.lease.conn().broken = true;
                }
                return Err(End::Close(ClientError::fatal(
                    "57014",
                    "query_timeout: the server did not answer, even to a cancel; connection closed",
                )));
            }
            Event::Other(_) => {
                return Err(End::Close(ClientError::fatal(
                    "25P03",
                    "terminating connection due to idle-in-transaction timeout (idle_transaction_timeout)",
                )))
            }
        }
        Ok(None)
    }

    /// A request that ended with Flush, all of whose replies are in, outside any transaction,
    /// that ran nothing or only reads on a replica: end its implicit transaction with our own
    /// Sync so the server goes back to the pool. asyncpg's prepare() is Parse/Describe/Flush and
    /// then nothing until the next query; a pipeline's read on a replica must not carry the
    /// client's next write there. Writes executed before a Flush keep the server until the
    /// client's own Sync (committing early would change the transaction's meaning).
    fn sync_after_flush(&mut self, tm: bool) {
        let Some(att) = self.attached.as_mut() else { return };
        let settled = att.batch_state == BatchState::Flushed
            && att.queue.is_empty()
            && att.sout.is_empty()
            && self.cin.is_empty();
        let idle = att.server_status.is_idle() && self.state.tx_status.is_idle();
        let harmless = !att.batch_executed || att.target == crate::router::Target::Replica;
        // Flushed excludes Skipping: a batch with an error pending waits for the client's Sync.
        if tm && settled && idle && harmless && !att.suspended && !att.copy_in {
            crate::wire::messages::put_empty(&mut att.sout, tag::SYNC);
            att.queue.push(Expect::SilentSync);
            att.batch_state = BatchState::Open;
        }
    }

    /// Nothing owed in either direction and no transaction open: a safe point to close.
    fn idle_between_requests(&self) -> bool {
        self.attached.as_ref().is_none_or(|a| {
            a.queue.is_empty()
                && a.sout.is_empty()
                && a.batch_state == BatchState::Open
                && a.server_status.is_idle()
                && self.state.tx_status.is_idle()
        }) && self.cin.is_empty()
    }

    /// `Some` when the attachment is over: released at a transaction boundary, or to be retried.
    fn attachment_done(&self) -> Option<Relayed> {
        match self.attached.as_ref().map(|a| a.outcome) {
            None | Some(Outcome::Release) => Some(Relayed::Released),
            Some(Outcome::Retry) => Some(Relayed::Retry),
            Some(Outcome::Serving) => None,
        }
    }

    /// Accounts a write to the server; false if it failed.
    fn wrote_server(&mut self, r: std::io::Result<usize>) -> bool {
        let n = match r {
            Ok(n) if n > 0 => n,
            _ => return false,
        };
        if let Some(att) = self.attached.as_mut() {
            att.sout.advance(n);
            att.bytes_in += n as u64;
            if att.lease.conn().stream.is_tls() {
                att.sflush = true;
            }
        }
        true
    }

    /// The server went away mid-request. A read on a replica that nothing was forwarded from
    /// yet is retried elsewhere; otherwise the client is told, and the connection is not reused.
    /// The node is not banned for it: the health probe and the next connect judge the node.
    fn server_lost(&mut self) -> Result<Relayed, End> {
        let mut on_primary = false;
        if let Some(att) = self.attached.as_mut() {
            // The server said why it ended the session (a FATAL such as 57P01, already passed on
            // to the client): a second FATAL of ours would reach a driver with nothing pending
            // and read as a bare close, so the client gets PostgreSQL's word alone.
            if (att.forwarded || att.replay.is_none()) && att.req_errored && att.lease.conn().broken {
                return Err(End::ClientGone);
            }
            att.lease.conn().broken = true;
            if att.replay.is_some() && !att.forwarded {
                return Ok(Relayed::Retry);
            }
            on_primary = att.backend.role == crate::pool::cluster::Role::Primary;
        }
        Err(End::Close(ClientError::server_lost(on_primary && self.rt.config.routing.role_discovery)))
    }

    /// `query_timeout`: ask the server to cancel what it is running (a task sends the cancel).
    fn cancel_running_query(&mut self) {
        let Some(att) = self.attached.as_mut() else {
            return;
        };
        let conn = att.lease.conn();
        let target = conn.cancel.clone();
        tracing::info!(client = self.handle.id, "query_timeout reached: cancelling the running query");
        // The session goes on (its timer's grace period bounds the wait for the server); the
        // gate keeps the connection from other clients until the server has taken the cancel.
        target.gate.begin();
        let wait = self.rt.config.proxy.cancel_wait_timeout.enabled().unwrap_or(Duration::from_secs(365 * 86_400));
        tokio::spawn(async move {
            let _ = tokio::time::timeout(wait, super::registry::send_cancel(target.peer, target.key)).await;
            target.gate.end();
        });
    }

    /// Moves whole server frames into the client's output, as far as back-pressure allows; a
    /// server that breaks the protocol ends the session.
    #[inline]
    fn pump_server(&mut self, tm: bool) -> Result<(), End> {
        self.process_server_input(tm).map_err(|e| server_protocol_error(&e))
    }

    /// Frames through [`Reply`]; large rows and copy data stream through as they arrive.
    fn process_server_input(&mut self, tm: bool) -> Result<(), WireError> {
        let Some(att) = self.attached.as_mut() else {
            return Ok(());
        };
        let before = self.cout.len();
        let mut buf = std::mem::take(&mut att.lease.conn().rbuf);
        let result = (|| loop {
            if att.s2c_passthrough > 0 {
                let n = att.s2c_passthrough.min(buf.len());
                if n == 0 {
                    return Ok(());
                }
                self.cout.extend_from_slice(&buf[..n]);
                buf.advance(n);
                att.s2c_passthrough -= n;
                continue;
            }
            if self.cout.len() >= HIGH_WATER || att.outcome != Outcome::Serving {
                return Ok(());
            }
            let Some((t, total)) = frame::peek_header(&buf)? else {
                return Ok(());
            };
            if buf.len() < total {
                if total > STREAM_OVER && matches!(t, tag::DATA_ROW | tag::COPY_DATA) {
                    att.s2c_passthrough = total;
                    continue;
                }
                return Ok(());
            }
            if matches!(t, tag::DATA_ROW | tag::COPY_DATA)
                && matches!(att.queue.front(), Some(Expect::Query | Expect::Execute))
            {
                // Rows (or COPY OUT data) answering the request at the head change nothing
                // pgshift tracks: a run of them goes through in one copy.
                let run = frame::run_of(&buf, t, HIGH_WATER - self.cout.len());
                self.cout.extend_from_slice(&buf[..run]);
                buf.advance(run);
                continue;
            }
            let mut reply = Reply {
                shared: &self.shared,
                state: &mut self.state,
                att: &mut *att,
                out: &mut self.cout,
                unsent_from: before,
                transaction_mode: tm,
            };
            reply.frame(t, &buf[..total])?;
            buf.advance(total);
        })();
        if let Some(att) = self.attached.as_mut() {
            att.lease.conn().rbuf = buf;
            att.forwarded |= self.cout.len() != before;
        }
        result
    }

    /// Moves whole client frames to the server, then ends a settled Flush-ended request with
    /// pgshift's own Sync where that gives the server back.
    fn pump_client(&mut self, tm: bool) -> Result<(), End> {
        match self.process_client_input(tm) {
            Ok(false) => {}
            Ok(true) => return Err(End::ClientGone),
            Err(e) => return Err(End::Close(ClientError::from_wire(&e))),
        }
        self.sync_after_flush(tm);
        Ok(())
    }

    /// Moves whole client frames to the server; returns true if the client sent Terminate.
    fn process_client_input(&mut self, tm: bool) -> Result<bool, WireError> {
        let Some(att) = self.attached.as_mut() else {
            return Ok(false);
        };
        let max = self.rt.config.proxy.max_packet_size;
        loop {
            if att.c2s_passthrough > 0 {
                let n = att.c2s_passthrough.min(self.cin.len());
                if n == 0 {
                    break;
                }
                att.sout.extend_from_slice(&self.cin[..n]);
                self.cin.advance(n);
                att.c2s_passthrough -= n;
                continue;
            }
            if att.sout.len() >= HIGH_WATER || (att.holds_requests() && att.queue.boundary_outstanding()) {
                break;
            }
            let Some((t, total)) = frame::peek_header(&self.cin)? else {
                break;
            };
            if !frame::is_frontend_tag(t) {
                return Err(WireError::UnknownMessage(t));
            }
            if total > max && t != tag::COPY_DATA {
                return Err(WireError::TooLarge { len: total, max });
            }
            if self.cin.len() < total {
                if total > STREAM_OVER && t == tag::COPY_DATA {
                    att.c2s_passthrough = total;
                    continue;
                }
                if total > super::request::STREAM_QUERY_OVER && t == tag::QUERY && super::request::stream_query(att) {
                    att.c2s_passthrough = total;
                    // Unread, it may hold SET, locks or anything else: the client keeps this server.
                    if tm && !self.state.pinned {
                        self.state.pinned = true;
                        self.shared.stats.record_pin("large_query");
                    }
                    continue;
                }
                break;
            }
            if t == tag::TERMINATE {
                return Ok(true);
            }
            let mut fwd = Fwd {
                shared: &self.shared,
                rt: &self.rt,
                state: &mut self.state,
                att: &mut *att,
                transaction_mode: tm,
                database: &self.pools.database,
                user: &self.user.name,
                has_replicas: !self.pools.cluster().replicas.is_empty(),
            };
            fwd.frame(t, &self.cin[..total]);
            self.cin.advance(total);
        }
        // A read that may still be retried on another server shows the client nothing before the
        // server's first reply: replies of pgshift's own wait for it (Reply emits them first).
        if att.replay.is_some() && !att.forwarded && att.queue.awaits_server() {
            return Ok(false);
        }
        let before = self.cout.len();
        let ready = att.queue.emit_synthetic(&mut self.cout, self.state.tx_status);
        att.forwarded |= self.cout.len() != before;
        if ready && att.queue.is_empty() && att.server_status.is_idle() && self.state.tx_status.is_idle() && tm {
            att.release();
        }
        Ok(false)
    }
}

/// More may be read into `buf`: below the high-water mark, or a frame at its head that is larger
/// and must arrive whole.
fn room(buf: &bytes::BytesMut) -> bool {
    if buf.len() < HIGH_WATER {
        return true;
    }
    matches!(frame::peek_header(buf), Ok(Some((_, total))) if total > buf.len())
}

fn server_protocol_error(e: &WireError) -> End {
    tracing::warn!("server sent invalid data: {e}");
    End::Close(ClientError::protocol("server sent data pgshift cannot parse; connection closed"))
}
