//! Server -> client: matches each server frame against the replies owed, drops those the proxy
//! asked for on its own behalf, inserts the proxy's own replies in order, and notices the end of
//! each request and transaction.
//!
//! Only tags that end or change something are looked at (ReadyForQuery, ErrorResponse, the
//! *Complete family, CommandComplete's tag); rows and copy data are copied through untouched.

use bytes::BytesMut;

use super::expect::Expect;
use super::state::{apply_to_server, Attached, ClientState};
use crate::shared::Shared;
use crate::stats::TrafficCounters;
use crate::wire::{frame, tag};
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
    /// Transaction pooling: a ReadyForQuery 'I' with nothing owed gives the server back.
    pub transaction_mode: bool,
}

impl Reply<'_> {
    /// Handles one whole server frame.
    pub fn frame(&mut self, t: u8, f: &[u8]) {
        tracing::trace!(tag = %char::from(t), len = f.len(), head = ?self.att.queue.front(), conn = self.att.lease.conn().id, "server frame");
        if matches!(self.att.queue.front(), Some(Expect::SilentQuery)) {
            return self.silent_query_frame(t, f);
        }
        match t {
            tag::READY_FOR_QUERY => return self.ready(f),
            tag::ERROR_RESPONSE => {
                self.error(f);
                if self.att.retry {
                    return;
                }
            }
            tag::PARSE_COMPLETE => {
                if let Some(Expect::Parse { stmt: Some(def) } | Expect::SilentParse { stmt: def }) =
                    self.att.queue.front()
                {
                    def.validated.store(true, Ordering::Relaxed);
                }
                let silent = matches!(self.att.queue.front(), Some(Expect::SilentParse { .. }));
                self.pop_expected(|e| matches!(e, Expect::Parse { .. } | Expect::SilentParse { .. }));
                if silent {
                    return self.after_pop();
                }
            }
            tag::CLOSE_COMPLETE => {
                let silent = matches!(self.att.queue.front(), Some(Expect::SilentClose));
                self.pop_expected(|e| matches!(e, Expect::Close | Expect::SilentClose));
                if silent {
                    return self.after_pop();
                }
            }
            tag::BIND_COMPLETE => self.pop_expected(|e| matches!(e, Expect::Bind)),
            tag::ROW_DESCRIPTION | tag::NO_DATA => {
                if matches!(self.att.queue.front(), Some(Expect::Describe)) {
                    self.att.queue.pop();
                }
            }
            tag::COMMAND_COMPLETE => {
                self.command_complete(f);
                if matches!(self.att.queue.front(), Some(Expect::Execute)) {
                    self.att.queue.pop();
                }
            }
            tag::COPY_IN_RESPONSE if matches!(self.att.queue.front(), Some(Expect::Execute)) => {
                for _ in 0..self.att.queue.drop_syncs_after_head() {
                    self.att.effects.pop_front();
                }
                self.att.copy_in = true;
            }
            tag::EMPTY_QUERY_RESPONSE | tag::PORTAL_SUSPENDED => {
                if matches!(self.att.queue.front(), Some(Expect::Execute)) {
                    self.att.queue.pop();
                }
            }
            _ => {}
        }
        self.out.extend_from_slice(f);
        self.after_pop();
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

    fn silent_query_frame(&mut self, t: u8, f: &[u8]) {
        match t {
            tag::ERROR_RESPONSE => {
                let e = frame::error_fields(f);
                tracing::warn!(
                    code = %String::from_utf8_lossy(e.code),
                    "replaying the client's settings on a server failed: {}",
                    String::from_utf8_lossy(e.message)
                );
                if e.is_fatal() {
                    self.att.lease.conn().broken = true;
                }
            }
            tag::READY_FOR_QUERY => {
                self.att.queue.pop();
                self.att.server_status = frame::ready_status(f);
                self.after_pop();
            }
            tag::NOTIFICATION_RESPONSE => self.out.extend_from_slice(f),
            _ => {}
        }
    }

    fn error(&mut self, f: &[u8]) {
        let e = frame::error_fields(f);
        if e.is_fatal() && self.att.replay.is_some() && !self.att.forwarded {
            // A replica ending the session (shutdown, crash) before answering a read: retry it.
            self.att.lease.conn().broken = true;
            self.att.retry = true;
            return;
        }
        self.shared.stats.record_error(e.code);
        if e.is_fatal() {
            self.att.lease.conn().broken = true;
        }
        self.att.req_errored = true;
        match self.att.queue.front() {
            Some(x) if x.is_extended() => {
                let conn = self.att.lease.conn();
                for id in self.att.queue.skip_to_sync() {
                    conn.state.remove_prepared(id);
                }
            }
            Some(_) => {}
            None => self.att.lease.conn().broken = true, // an unsolicited error: the server is ending the session
        }
    }

    fn command_complete(&mut self, f: &[u8]) {
        match frame::command_tag(f) {
            b"ROLLBACK" => self.att.saw_rollback = true,
            b"DISCARD ALL" | b"DEALLOCATE ALL" => self.att.lease.conn().state.clear_prepared(),
            _ => {}
        }
    }

    fn ready(&mut self, f: &[u8]) {
        let status = frame::ready_status(f);
        self.att.server_status = status;
        match self.att.queue.pop() {
            Some(Expect::Query | Expect::Sync) => self.end_of_request(status),
            other => {
                tracing::warn!(expected = ?other, "unexpected ReadyForQuery; closing the server after this transaction");
                self.att.lease.conn().broken = true;
            }
        }
        self.state.tx_status = status;
        self.out.extend_from_slice(f);
        self.after_pop();
        self.check_release();
    }

    /// A client request is fully answered: commit or drop its session effects, record latency.
    fn end_of_request(&mut self, status: u8) {
        let effects = self.att.effects.pop_front().unwrap_or_default();
        if self.att.req_errored {
            self.state.tx_effects.clear();
        } else {
            self.state.tx_effects.extend(effects);
        }
        if status == b'I' {
            let committed = std::mem::take(&mut self.state.tx_effects);
            if !self.att.saw_rollback {
                let server = &mut self.att.lease.conn().state.settings;
                for e in &committed {
                    self.state.apply(e);
                    apply_to_server(server, e);
                }
            }
        } else if status == b'E' {
            self.state.tx_effects.clear();
        }
        if let Some(t) = self.att.req_started.take() {
            let elapsed = t.elapsed();
            self.shared.stats.record_query(self.att.kind, elapsed);
            let traffic: &TrafficCounters = self.att.lease.pool().stats.traffic.local();
            traffic.queries.fetch_add(1, Ordering::Relaxed);
            traffic.query_us.fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
            if self.att.queue.boundary_outstanding() {
                self.att.req_started = Some(std::time::Instant::now());
            }
        }
        self.att.req_errored = false;
        self.att.saw_rollback = false;
    }

    fn check_release(&mut self) {
        let idle = self.att.server_status == b'I' && self.state.tx_status == b'I';
        if idle && self.att.queue.is_empty() && self.transaction_mode && self.state.pinned.is_none() {
            self.att.release = true;
        }
    }
}
