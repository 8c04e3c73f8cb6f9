//! The queue of replies owed to the client, in the order it asked for them.
//!
//! Each forwarded client message that PostgreSQL answers gets an entry; so does each reply the
//! proxy makes itself (CloseComplete for a statement it closed locally, ParseComplete for one the
//! server already has) and each message it sends on its own behalf (re-Parse on a new server,
//! replayed settings), whose replies the client must not see. Matching server replies against the
//! head of the queue is what keeps injected and suppressed messages in protocol order, and what
//! tells when the server owes nothing more (the condition to give it back).

use bytes::BytesMut;
use std::collections::VecDeque;
use std::sync::Arc;

use crate::session_state::StmtDef;

use crate::wire::messages;
use crate::wire::tag;

/// A reply the proxy makes itself, emitted when it reaches the head of the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Synth {
    /// ParseComplete for a statement the server already had.
    ParseComplete,
    /// CloseComplete for a statement closed locally.
    CloseComplete,
    /// CommandComplete with a fixed tag (DEALLOCATE handled locally).
    CommandComplete(&'static str),
    /// ReadyForQuery with the current transaction status.
    Ready,
    /// ErrorResponse 0A000 for a session-only feature refused in transaction mode.
    Refused(&'static str),
    /// ErrorResponse 53400 for a Parse past `max_client_prepared_statements` (the limit).
    StatementLimit(usize),
}

/// One owed reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// Client Parse: ParseComplete goes to the client. `stmt` is the proxy-wide statement it
    /// creates on the server, forgotten again if the Parse fails or is skipped.
    Parse { stmt: Option<Arc<StmtDef>> },
    /// Our re-Parse of a client's statement on this server: its ParseComplete is dropped.
    SilentParse { stmt: Arc<StmtDef> },
    /// Our re-Parse of the client's unnamed statement on a server that has not seen it.
    SilentUnnamedParse,
    /// Bind -> BindComplete; `stmt` is the proxy-wide statement bound (for 0A000 recovery).
    Bind { stmt: Option<Arc<StmtDef>> },
    /// Describe -> [ParameterDescription] RowDescription | NoData.
    Describe,
    /// Execute -> ... CommandComplete | EmptyQueryResponse | PortalSuspended.
    Execute,
    /// Client Close -> CloseComplete.
    Close,
    /// Our Close of an evicted statement: CloseComplete dropped.
    SilentClose,
    /// Sync -> ReadyForQuery.
    Sync,
    /// A Sync whose batch the proxy is re-running: its ReadyForQuery is dropped.
    SilentSync,
    /// Simple Query or FunctionCall -> ... ReadyForQuery.
    Query,
    /// A query we sent (settings replay): every reply dropped through its ReadyForQuery.
    SilentQuery,
    /// A reply we make ourselves.
    Synthetic(Synth),
}

impl Expect {
    /// Entries that belong to the extended protocol, skipped by the server after an error until Sync.
    pub fn is_extended(&self) -> bool {
        !matches!(self, Expect::Sync | Expect::SilentSync | Expect::Query | Expect::SilentQuery)
    }
}

/// The owed replies, oldest first.
#[derive(Debug, Default)]
pub struct ExpectQueue {
    q: VecDeque<Expect>,
}

impl ExpectQueue {
    /// Appends an owed reply.
    #[inline]
    pub fn push(&mut self, e: Expect) {
        self.q.push_back(e);
    }
    /// The oldest owed reply.
    #[inline]
    pub fn front(&self) -> Option<&Expect> {
        self.q.front()
    }
    /// Removes the oldest.
    #[inline]
    pub fn pop(&mut self) -> Option<Expect> {
        self.q.pop_front()
    }
    /// True when the server owes nothing.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.q.is_empty()
    }
    /// Forgets everything (the server connection is gone).
    pub fn clear(&mut self) {
        self.q.clear();
    }
    /// True if a Sync or Query is outstanding (a request boundary was sent and not yet answered).
    pub fn boundary_outstanding(&self) -> bool {
        self.q.iter().any(|e| matches!(e, Expect::Sync | Expect::SilentSync | Expect::Query | Expect::SilentQuery))
    }

    /// True if a reply of the proxy's own is at the head (held back, or about to be emitted).
    #[inline]
    pub fn synthetic_at_head(&self) -> bool {
        matches!(self.q.front(), Some(Expect::Synthetic(_)))
    }

    /// True if the server owes any reply (not only the proxy's own).
    pub fn awaits_server(&self) -> bool {
        self.q.iter().any(|e| !matches!(e, Expect::Synthetic(_)))
    }

    /// Number of owed replies.
    pub fn len(&self) -> usize {
        self.q.len()
    }

    /// Turns the Sync at the head into a SilentSync (its batch is being re-run).
    pub fn silence_head_sync(&mut self) {
        if let Some(e @ Expect::Sync) = self.q.front_mut() {
            *e = Expect::SilentSync;
        }
    }

    /// COPY FROM STDIN began for the Execute at the head: the server ignores every Sync it reads
    /// until CopyDone/CopyFail, so Syncs the client pipelined after that Execute get no reply.
    /// Drops them; returns how many.
    pub fn drop_syncs_after_head(&mut self) -> usize {
        let before = self.q.len();
        let mut first = true;
        self.q.retain(|e| std::mem::replace(&mut first, false) || !matches!(e, Expect::Sync));
        before - self.q.len()
    }

    /// After an ErrorResponse in the extended protocol the server skips to the next Sync: drops
    /// the entries it will not answer and returns the statements whose Parse never happened.
    pub fn skip_to_sync(&mut self) -> Vec<u64> {
        let mut unprepared = Vec::new();
        while let Some(e) = self.q.front() {
            if !e.is_extended() {
                break;
            }
            if let Some(Expect::Parse { stmt: Some(def) } | Expect::SilentParse { stmt: def }) = self.q.pop_front() {
                unprepared.push(def.id);
            }
        }
        unprepared
    }

    /// Emits the proxy's own replies now at the head into `out`; `status` fills ReadyForQuery.
    /// Returns true if a ReadyForQuery was emitted.
    pub fn emit_synthetic(&mut self, out: &mut BytesMut, status: crate::wire::TxStatus) -> bool {
        let mut ready = false;
        while let Some(Expect::Synthetic(s)) = self.q.front() {
            match *s {
                Synth::ParseComplete => messages::put_empty(out, tag::PARSE_COMPLETE),
                Synth::CloseComplete => messages::put_empty(out, tag::CLOSE_COMPLETE),
                Synth::CommandComplete(t) => messages::put_command_complete(out, t),
                Synth::Refused(what) => messages::put_error(
                    out,
                    tag::ERROR_RESPONSE,
                    "ERROR",
                    "0A000",
                    &format!("{what} is not supported in transaction pooling mode (session_features = \"reject\")"),
                ),
                Synth::StatementLimit(max) => messages::put_error(
                    out,
                    tag::ERROR_RESPONSE,
                    "ERROR",
                    "53400",
                    &format!(
                        "too many prepared statements on this connection (max_client_prepared_statements = {max}); close or deallocate some"
                    ),
                ),
                Synth::Ready => {
                    messages::put_ready_for_query(out, status);
                    ready = true;
                }
            }
            self.q.pop_front();
        }
        ready
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def(id: u64) -> Arc<StmtDef> {
        let reg = crate::session_state::PreparedRegistry::default();
        let cfg = crate::router::ClassifierConfig::default();
        let d = reg.intern(b"db", format!("select {id}\0\0\0").as_bytes(), || {
            Arc::new(crate::router::classify("select 1", &cfg))
        });
        std::mem::forget(reg);
        d
    }

    #[test]
    fn skip_to_sync_reports_unprepared() {
        let mut q = ExpectQueue::default();
        let (a, b) = (def(7), def(8));
        q.push(Expect::Parse { stmt: Some(a.clone()) });
        q.push(Expect::SilentParse { stmt: b.clone() });
        q.push(Expect::Bind { stmt: None });
        q.push(Expect::Synthetic(Synth::CloseComplete));
        q.push(Expect::Sync);
        q.push(Expect::Parse { stmt: Some(def(9)) });
        assert_eq!(q.skip_to_sync(), vec![a.id, b.id]);
        assert_eq!(q.front(), Some(&Expect::Sync));
    }

    #[test]
    fn synthetic_replies_come_out_in_order() {
        let mut q = ExpectQueue::default();
        q.push(Expect::Synthetic(Synth::ParseComplete));
        q.push(Expect::Synthetic(Synth::Ready));
        q.push(Expect::Bind { stmt: None });
        let mut out = BytesMut::new();
        assert!(q.emit_synthetic(&mut out, crate::wire::TxStatus::Idle));
        assert_eq!(&out[..], b"1\0\0\0\x04Z\0\0\0\x05I");
        assert_eq!(q.front(), Some(&Expect::Bind { stmt: None }));
    }
}
