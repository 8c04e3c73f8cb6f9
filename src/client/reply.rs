//! Server -> client: matches each server frame against the replies owed, drops those the proxy
//! asked for on its own behalf, inserts the proxy's own replies in order, and notices the end of
//! each request and transaction.
//!
//! Only tags that end or change something are looked at (ReadyForQuery, ErrorResponse, the
//! *Complete family, CommandComplete's tag); rows and copy data are copied through untouched.

use bytes::BytesMut;

use super::expect::Expect;
use super::state::{apply_to_server, Attached, ClientState, Outcome, Rerun};
use crate::notify;
use crate::shared::Shared;
use crate::stats::TrafficCounters;
use crate::wire::status::BadTxStatus;
use crate::wire::{frame, tag, TxStatus};
use std::sync::atomic::Ordering;

/// What replies need to see besides the frame.
pub struct Reply<'a> {
    /// Stats.
    pub shared: &'a Shared,
    /// The client's session state.
    pub state: &'a mut ClientState,
    /// The server it holds.
    pub att: &'a mut Attached,
    /// Output to the client.
    pub out: &'a mut BytesMut,
    /// Length of `out` when this batch of server frames began: what lies beyond it has not
    /// reached the client yet.
    pub unsent_from: usize,
    /// Transaction pooling: a ReadyForQuery 'I' with nothing owed gives the server back.
    pub transaction_mode: bool,
}

impl Reply<'_> {
    /// Handles one whole server frame; an error is a protocol violation by the server.
    pub fn frame(&mut self, t: u8, f: &[u8]) -> Result<(), BadTxStatus> {
        tracing::trace!(tag = %char::from(t), len = f.len(), head = ?self.att.queue.front(), conn = self.att.lease.conn().id, "server frame");
        if matches!(self.att.queue.front(), Some(Expect::SilentQuery)) {
            return self.silent_query_frame(t, f);
        }
        if matches!(self.att.queue.front(), Some(Expect::SilentUnnamedParse)) && t == tag::PARSE_COMPLETE {
            self.att.queue.pop();
            self.after_pop();
            return Ok(());
        }
        if self.att.queue.synthetic_at_head() {
            // pgshift's own replies, held back while the read could still be retried elsewhere
            if t == tag::ERROR_RESPONSE && self.retry_read(&frame::error_fields(f)) {
                return Ok(());
            }
            self.after_pop();
        }
        match t {
            tag::READY_FOR_QUERY => return self.ready(f),
            tag::ERROR_RESPONSE if !self.error(f) => return Ok(()),
            tag::PARSE_COMPLETE => {
                if let Some(Expect::Parse { stmt: Some(def) } | Expect::SilentParse { stmt: def }) =
                    self.att.queue.front()
                {
                    def.validated.store(true, Ordering::Relaxed);
                }
                let silent = matches!(self.att.queue.front(), Some(Expect::SilentParse { .. }));
                self.pop_expected(|e| matches!(e, Expect::Parse { .. } | Expect::SilentParse { .. }));
                if silent {
                    self.after_pop();
                    return Ok(());
                }
            }
            tag::CLOSE_COMPLETE => {
                let silent = matches!(self.att.queue.front(), Some(Expect::SilentClose));
                self.pop_expected(|e| matches!(e, Expect::Close | Expect::SilentClose));
                if silent {
                    self.after_pop();
                    return Ok(());
                }
            }
            tag::BIND_COMPLETE => self.pop_expected(|e| matches!(e, Expect::Bind { .. })),
            tag::ROW_DESCRIPTION | tag::NO_DATA => {
                if matches!(self.att.queue.front(), Some(Expect::Describe)) {
                    self.att.queue.pop();
                }
            }
            tag::COMMAND_COMPLETE => {
                if let Some(c) = self.att.capture.as_mut() {
                    c.outcome.command_complete(f);
                }
                self.command_complete(f);
                if matches!(self.att.queue.front(), Some(Expect::Execute)) {
                    self.att.queue.pop();
                    self.att.batch_executed = true;
                }
            }
            tag::COPY_IN_RESPONSE if matches!(self.att.queue.front(), Some(Expect::Execute)) => {
                let dropped = self.att.queue.drop_syncs_after_head();
                for _ in 0..dropped {
                    self.att.effects.pop_front();
                }
                if let Some(c) = self.att.capture.as_mut() {
                    c.boundaries = c.boundaries.saturating_sub(dropped as u32);
                }
                self.att.copy_in = true;
            }
            tag::EMPTY_QUERY_RESPONSE | tag::PORTAL_SUSPENDED => {
                self.att.suspended |= t == tag::PORTAL_SUSPENDED;
                if matches!(self.att.queue.front(), Some(Expect::Execute)) {
                    self.att.queue.pop();
                    self.att.batch_executed = true;
                }
            }
            tag::NOTIFICATION_RESPONSE => {
                self.notification(f);
                self.after_pop();
                return Ok(());
            }
            _ => {}
        }
        self.out.extend_from_slice(f);
        self.after_pop();
        Ok(())
    }

    /// A notification from the server itself (a pinned client that LISTENs on it): the sender
    /// pid the client can relate to, as for those the listener connection passes on.
    fn notification(&mut self, f: &[u8]) {
        match notify::sender_pid(f).and_then(|pid| self.shared.sessions.holder(pid)) {
            Some(client_pid) => self.out.extend_from_slice(&notify::with_pid(f, client_pid)),
            None => self.out.extend_from_slice(f),
        }
    }

    /// Pops the head if it is the entry this reply answers; otherwise the server and our queue
    /// disagree, and the connection cannot be trusted for another client.
    fn pop_expected(&mut self, is: impl Fn(&Expect) -> bool) {
        match self.att.queue.front() {
            Some(e) if is(e) => {
                self.att.queue.pop();
            }
            other => {
                tracing::warn!(expected = ?other, "reply does not match the request queue; closing the server after this transaction");
                self.att.lease.conn().broken = true;
            }
        }
    }

    fn after_pop(&mut self) {
        if self.att.queue.emit_synthetic(self.out, self.state.tx_status) {
            self.check_release();
        }
    }

    fn silent_query_frame(&mut self, t: u8, f: &[u8]) -> Result<(), BadTxStatus> {
        match t {
            tag::ERROR_RESPONSE => {
                let e = frame::error_fields(f);
                tracing::warn!(
                    code = %String::from_utf8_lossy(e.code),
                    "replaying the client's settings on a server failed: {}",
                    String::from_utf8_lossy(e.message)
                );
                // The record says the client's settings are in place; one of them is not (it is
                // at its default): the server is reset before another client gets it.
                self.att.lease.conn().taint(crate::server::Residue::Unknown);
                if e.is_fatal() {
                    self.att.lease.conn().broken = true;
                }
            }
            tag::READY_FOR_QUERY => {
                self.att.queue.pop();
                if !matches!(self.att.queue.front(), Some(Expect::SilentQuery)) {
                    // The replay is over: a cancel now reaches the client's own query.
                    self.att.lease.conn().cancel.replaying.store(false, Ordering::Release);
                }
                self.att.server_status = frame::ready_status(f)?;
                self.after_pop();
            }
            tag::NOTIFICATION_RESPONSE => self.notification(f),
            _ => {}
        }
        Ok(())
    }

    /// A replica ending the session (shutdown, crash) before the client saw any of its answer to
    /// a read: the read is retried elsewhere, and what this batch put in the client's output is
    /// taken back (it has not been sent).
    fn retry_read(&mut self, e: &frame::ErrorFields<'_>) -> bool {
        if !(e.is_fatal() && self.att.replay.is_some() && !self.att.forwarded) {
            return false;
        }
        self.out.truncate(self.unsent_from);
        self.att.lease.conn().broken = true;
        self.att.outcome = Outcome::Retry;
        true
    }

    /// Handles an ErrorResponse; false if it must not reach the client (the request is being
    /// retried or re-run instead).
    fn error(&mut self, f: &[u8]) -> bool {
        let e = frame::error_fields(f);
        if self.retry_read(&e) {
            return false;
        }
        if self.rerun_stale_plan(&e) {
            return false;
        }
        if let Some(c) = self.att.capture.as_mut() {
            c.errors += 1;
            c.outcome.error();
        }
        self.shared.stats.record_error(e.code);
        if e.is_fatal() {
            self.att.lease.conn().broken = true;
        }
        self.att.req_errored = true;
        self.att.errored = true;
        // An error ends copy-in mode on the server: through the extended protocol it then waits
        // for the client's Sync, which is owed a ReadyForQuery again.
        self.att.copy_in = false;
        match self.att.queue.front() {
            Some(x) if x.is_extended() => {
                let conn = self.att.lease.conn();
                for id in self.att.queue.skip_to_sync() {
                    conn.state.remove_prepared(id);
                }
                // No Sync sent yet: the server now discards everything up to the client's next
                // Sync, so frames still to come owe no replies (see Fwd::frame).
                if !matches!(self.att.queue.front(), Some(Expect::Sync | Expect::SilentSync)) {
                    self.att.skip_to_client_sync();
                }
            }
            Some(_) => {}
            None => self.att.lease.conn().broken = true, // an unsolicited error: the server is ending the session
        }
        true
    }

    /// "cached plan must not change result type" (0A000) after DDL: when nothing has run yet,
    /// no transaction is open, and the batch only binds, describes (its portal, so the client
    /// receives the new row shape) and executes, re-prepare the statement on this server and
    /// re-run the batch once. Without this, PgBouncer users must RECONNECT every bouncer.
    ///
    /// The same recovery applies when a statement pgshift prepared on this server has vanished
    /// from it (26000 for the Bind of a proxy-wide statement: server-side code ran DEALLOCATE):
    /// it is prepared again and the batch re-run, so its owner never sees the error.
    fn rerun_stale_plan(&mut self, e: &frame::ErrorFields<'_>) -> bool {
        let stale = e.code == b"0A000" && e.message == b"cached plan must not change result type";
        let vanished = e.code == b"26000";
        if !stale && !vanished {
            return false;
        }
        let a = &mut *self.att;
        let Some(Expect::Bind { stmt: Some(def) }) = a.queue.front() else { return false };
        let def = def.clone();
        let describes_portal =
            frames(&a.last_batch).any(|f| f.first() == Some(&tag::DESCRIBE) && frame::body(f).first() == Some(&b'P'));
        if a.rerun != Rerun::Armed || a.batch_executed || a.server_status.in_block() || (stale && !describes_portal) {
            return false;
        }
        for id in a.queue.skip_to_sync() {
            a.lease.conn().state.remove_prepared(id);
        }
        if a.queue.len() != 1 || !a.batch.is_empty() {
            return false; // more was pipelined after this batch: re-running would reorder replies
        }
        a.queue.silence_head_sync();
        a.sout.extend_from_slice(&crate::session_state::close_statement_frame(def.id));
        a.queue.push(Expect::SilentClose);
        a.sout.extend_from_slice(&def.parse_frame);
        a.queue.push(Expect::SilentParse { stmt: def.clone() });
        a.lease.conn().state.add_prepared(&def);
        for f in frames(&a.last_batch) {
            match f.first().copied() {
                Some(tag::BIND) => a.queue.push(Expect::Bind { stmt: None }),
                Some(tag::DESCRIBE) => a.queue.push(Expect::Describe),
                Some(tag::EXECUTE) => a.queue.push(Expect::Execute),
                Some(tag::SYNC) => a.queue.push(Expect::Sync),
                _ => {}
            }
        }
        let batch = std::mem::take(&mut a.last_batch);
        a.sout.extend_from_slice(&batch);
        a.rerun = Rerun::Spent;
        tracing::info!("statement plan went stale after DDL; re-prepared it and re-ran the batch");
        true
    }

    fn command_complete(&mut self, f: &[u8]) {
        match frame::command_tag(f) {
            b"ROLLBACK" => self.att.saw_rollback = true,
            b"DISCARD ALL" | b"DEALLOCATE ALL" => self.att.lease.conn().state.clear_prepared(),
            _ => {}
        }
    }

    fn ready(&mut self, f: &[u8]) -> Result<(), BadTxStatus> {
        let status = frame::ready_status(f)?;
        self.att.server_status = status;
        self.att.batch_executed = false;
        self.att.suspended = false;
        if matches!(self.att.queue.front(), Some(Expect::SilentSync)) {
            // Our own Sync: after a Flush-ended request (to give the server back), or a batch
            // being re-run. The client asked for no ReadyForQuery.
            self.att.queue.pop();
            self.after_pop();
            self.check_release();
            return Ok(());
        }
        match self.att.queue.pop() {
            Some(Expect::Query | Expect::Sync) => self.end_of_request(status),
            other => {
                tracing::warn!(expected = ?other, "unexpected ReadyForQuery; closing the server after this transaction");
                self.att.lease.conn().broken = true;
            }
        }
        self.state.tx_status = status;
        if status.is_idle() {
            // A transaction ended: if it wrote, it is now committed (or failed on both sides
            // alike): hand it to the mirror; otherwise forget what was captured.
            if let Some(c) = self.att.capture.as_mut() {
                let mut c = std::mem::take(c);
                c.residue = self.att.settings_unsure;
                if c.wrote {
                    self.att.committed.push(c);
                }
            }
        }
        self.out.extend_from_slice(f);
        self.after_pop();
        self.check_release();
        Ok(())
    }

    /// A client request is fully answered: commit or drop its session effects, record latency.
    fn end_of_request(&mut self, status: TxStatus) {
        let effects = self.att.effects.pop_front().unwrap_or_default();
        if self.att.req_errored {
            self.drop_effects(!effects.is_empty());
        } else if !effects.is_empty() {
            self.state.tx_effects.get_or_insert_default().extend(effects);
        }
        if status.is_idle() && self.att.saw_rollback {
            self.drop_effects(false);
        } else if status.is_idle() {
            if let Some(committed) = self.state.tx_effects.take() {
                let server = &mut self.att.lease.conn().state.settings;
                for e in committed.iter() {
                    self.state.apply(e);
                    apply_to_server(server, e);
                }
            }
        } else if status == TxStatus::Failed {
            self.drop_effects(false);
        }
        if let Some(t) = self.att.req_started.take() {
            let now = std::time::Instant::now();
            self.att.answered_at = Some(now);
            let elapsed = now.saturating_duration_since(t);
            self.shared.stats.record_query(self.att.kind, elapsed);
            let traffic: &TrafficCounters = self.att.lease.pool().stats.traffic.local();
            traffic.queries.fetch_add(1, Ordering::Relaxed);
            traffic.query_us.fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
            if self.att.queue.boundary_outstanding() {
                self.att.req_started = Some(now);
            }
        }
        self.att.req_errored = false;
        self.att.saw_rollback = false;
    }

    /// Forgets the session effects of the open transaction (and `more`: the request's own) after
    /// an error or a rollback. Which of them the server kept is not known: a COMMIT, COMMIT AND
    /// CHAIN or ROLLBACK TO inside the same request or transaction may have made some permanent,
    /// so a server that ran any is reset before another client gets it.
    fn drop_effects(&mut self, more: bool) {
        let pending = self.state.tx_effects.take().is_some_and(|e| !e.is_empty());
        if pending || more {
            self.att.lease.conn().taint(crate::server::Residue::Unknown);
        }
    }

    fn check_release(&mut self) {
        let idle = self.att.server_status.is_idle() && self.state.tx_status.is_idle();
        if idle && self.att.queue.is_empty() && self.transaction_mode && !self.state.pinned {
            self.att.release();
        }
    }
}

/// The whole frames in a buffer of whole frames.
fn frames(buf: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut at = 0;
    std::iter::from_fn(move || {
        let (_, total) = frame::complete_frame(&buf[at..]).ok().flatten()?;
        let f = &buf[at..at + total];
        at += total;
        Some(f)
    })
}
