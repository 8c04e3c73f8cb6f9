//! Requests answered without a server: Parse/Close/Sync of known statements, LISTEN/UNLISTEN
//! through the shared listener, copy messages left over from a failed COPY, and errors in place
//! of requests that could not be sent anywhere.

use bytes::Buf;

use super::request::{self, Request};
use super::session::{LastFrame, Session};
use crate::config::PoolMode;
use crate::error::ClientError;
use crate::wire::{messages, TxStatus};

impl Session {
    /// Drops a request made only of CopyData, CopyDone and CopyFail, as PostgreSQL drops them
    /// outside a COPY: they are what a client was still sending when its COPY failed (the server
    /// answered ErrorResponse and ReadyForQuery, and the transaction ended). No COPY can be under
    /// way here (one keeps its server attached), and nothing answers such messages, so a server
    /// taken for them would stay with this client until its next request.
    pub(super) fn drop_stray_copy(&mut self, req: Request) -> bool {
        use crate::wire::{frame, tag};
        if req.len == 0 || req.terminate {
            return false;
        }
        let mut at = 0;
        while let Ok(Some((t, total))) = frame::complete_frame(&self.cin[at..req.len]) {
            if !matches!(t, tag::COPY_DATA | tag::COPY_DONE | tag::COPY_FAIL) {
                return false;
            }
            at += total;
        }
        if at != req.len {
            return false;
        }
        tracing::debug!(client = self.handle.id, bytes = at, "dropped copy messages sent after their COPY ended");
        self.cin.advance(at);
        true
    }

    /// Drops a request's frames up to and including Sync, answering the Sync (extended-protocol
    /// error recovery when the batch could not be sent anywhere).
    pub(super) fn skip_request(&mut self, req: Request) {
        let frames = self.cin.split_to(req.len);
        if frames.last_frame_tag() == Some(crate::wire::tag::SYNC) {
            self.skip_to_sync = false;
            messages::put_ready_for_query(&mut self.cout, self.state.tx_status);
        }
    }
    /// Answers a request that could not get a server with an ERROR (and ReadyForQuery where the
    /// protocol wants one), so the client can retry on the same connection.
    pub(super) fn answer_in_place(&mut self, req: Request, e: &ClientError) {
        self.shared.stats.record_error(e.code.as_bytes());
        self.cout.extend_from_slice(&e.frame());
        let frames = self.cin.split_to(req.len);
        match frames.last_frame_tag() {
            Some(crate::wire::tag::QUERY | crate::wire::tag::FUNCTION_CALL | crate::wire::tag::SYNC) => {
                messages::put_ready_for_query(&mut self.cout, self.state.tx_status)
            }
            _ => self.skip_to_sync = true,
        }
    }
    /// A request of only Parse (of statements some server already accepted), Close of named
    /// statements, Sync and Flush needs no server: answer it here. This lets PQprepare outside a
    /// transaction finish while every connection is busy (pgbench -M prepared with more clients
    /// per thread than connections would otherwise deadlock: PQprepare blocks the whole thread).
    pub(super) fn answer_locally(&mut self, req: Request) -> bool {
        use crate::wire::{frame, tag};
        if !self.state.track_prepared || !self.state.tx_status.is_idle() || req.terminate || req.len == 0 {
            return false;
        }
        let mut scope = None;
        let mut plan = Vec::new();
        let mut at = 0;
        while let Ok(Some((t, total))) = frame::complete_frame(&self.cin[at..req.len]) {
            let body = frame::body(&self.cin[at..at + total]);
            at += total;
            match t {
                tag::PARSE => {
                    let Some((name, tail)) = frame::cstr(body).filter(|(n, _)| !n.is_empty()) else { return false };
                    let scope = scope.get_or_insert_with(|| {
                        super::statements::scope(&self.pools.database, &self.user.name, &self.state.settings)
                    });
                    let Some(def) = self.shared.prepared.validated(scope, tail) else { return false };
                    plan.push((t, bytes::Bytes::copy_from_slice(name), Some(def)));
                }
                tag::CLOSE => {
                    let Some((b'S', rest)) = body.split_first().map(|(k, r)| (*k, r)) else { return false };
                    let Some((name, _)) = frame::cstr(rest).filter(|(n, _)| self.state.statements.contains_key(n))
                    else {
                        return false;
                    };
                    plan.push((t, bytes::Bytes::copy_from_slice(name), None));
                }
                tag::SYNC | tag::FLUSH => plan.push((t, bytes::Bytes::new(), None)),
                _ => return false,
            }
        }
        if at != req.len {
            return false;
        }
        // Past max_client_prepared_statements the server path refuses the Parse.
        let max = self.rt.config.proxy.max_client_prepared_statements;
        let added = plan.iter().filter(|(t, n, _)| *t == tag::PARSE && !self.state.statements.contains_key(n)).count();
        if max > 0 && self.state.statements.len() + added > max {
            return false;
        }
        for (t, name, def) in plan {
            match (t, def) {
                (tag::PARSE, Some(def)) => {
                    self.state.statements.insert(name, def);
                    messages::put_empty(&mut self.cout, tag::PARSE_COMPLETE);
                }
                (tag::CLOSE, _) => {
                    self.state.statements.remove(&name);
                    messages::put_empty(&mut self.cout, tag::CLOSE_COMPLETE);
                }
                (tag::SYNC, _) => messages::put_ready_for_query(&mut self.cout, TxStatus::Idle),
                _ => {}
            }
        }
        self.cin.advance(req.len);
        true
    }
    /// Whether the request may be a lone LISTEN/UNLISTEN that [`Self::listen_locally`] takes:
    /// most requests are not, and this says so from the raw bytes, without a parse.
    pub(super) fn may_listen_locally(&self, req: Request) -> bool {
        use crate::wire::{frame, tag};
        let tm = self.pools.mode == PoolMode::Transaction && !self.state.pinned;
        if !tm || !self.state.tx_status.is_idle() || req.terminate {
            return false;
        }
        let f = &self.cin[..req.len];
        if !matches!(frame::complete_frame(f), Ok(Some((tag::QUERY, n))) if n == req.len) {
            return false;
        }
        let body = frame::body(f);
        let start = body.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(body.len());
        let word = &body[start..];
        let starts = |w: &[u8]| word.len() >= w.len() && word[..w.len()].eq_ignore_ascii_case(w);
        starts(b"listen") || starts(b"unlisten")
    }

    /// A lone LISTEN/UNLISTEN outside a transaction, in transaction mode: subscribe through the
    /// pool's shared listener connection instead of pinning the client to a server.
    pub(super) async fn listen_locally(&mut self, req: Request) -> bool {
        use crate::router::SessionEffect;
        use crate::wire::tag;
        let Some(sql) = request::sql_of(tag::QUERY, &self.cin[..req.len]) else { return false };
        let class = request::classify(&self.shared, &self.rt, &sql);
        let [stmt] = class.statements.as_slice() else { return false };
        let hub = self.shared.notify.clone();
        let command = match &stmt.session {
            SessionEffect::Listen { channel } => {
                let pool = self.pools.primary_for(self.shared.migration.phase_of(&self.pools.db.server_db)).clone();
                let (rx, listening) = hub.listen(&pool, self.handle.id, channel);
                if let Some(rx) = rx {
                    self.notify_rx = Some(rx);
                }
                // Answer once the shared connection listens (bounded: a down primary must not
                // hang the client; it gets its answer and notifications start when it is back).
                let _ = tokio::time::timeout(std::time::Duration::from_secs(5), listening).await;
                "LISTEN"
            }
            SessionEffect::Unlisten { channel } => {
                hub.unlisten(self.handle.id, channel.as_deref());
                "UNLISTEN"
            }
            _ => return false,
        };
        crate::notify::answer(&mut self.cout, command, TxStatus::Idle);
        self.cin.advance(req.len);
        true
    }
}
