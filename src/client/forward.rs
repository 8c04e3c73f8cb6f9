//! Client -> server: forwards each client frame, renaming named prepared statements to proxy-wide
//! names and preparing them lazily on the server in use, and noting what each reply will be.
//!
//! Only Parse, Bind, Describe and Close are looked into (and only their names); every other frame
//! is copied as it came. Session-changing statements are noted here and applied when they commit.

use bytes::{BufMut, BytesMut};
use std::sync::Arc;
use std::time::Instant;

use super::expect::{Expect, Synth};
use super::request::{classify, classify_looked, sql_of};
use super::state::{Attached, BatchState, ClientState};
use crate::config::SessionFeatures;
use crate::router::{Classification, SessionEffect, Target};
use crate::server::Residue;
use crate::session_state::{close_statement_frame, StmtDef};
use crate::shared::{Runtime, Shared};
use crate::wire::messages::{put_cstr, put_frame};
use crate::wire::{frame, tag};

/// What forwarding needs to see besides the frame.
pub struct Fwd<'a> {
    /// Process-wide state (statement registry, classifier cache, stats).
    pub shared: &'a Shared,
    /// The runtime of this transaction.
    pub rt: &'a Runtime,
    /// The client's session state.
    pub state: &'a mut ClientState,
    /// The server it holds.
    pub att: &'a mut Attached,
    /// Transaction pooling (pins matter) rather than session pooling.
    pub transaction_mode: bool,
    /// The client's database (statement definitions are per database, role and settings).
    pub database: &'a str,
    /// The client's role.
    pub user: &'a str,
    /// The database's cluster has replicas (reads need classifying).
    pub has_replicas: bool,
}

impl Fwd<'_> {
    /// Forwards or answers one whole client frame.
    pub fn frame(&mut self, t: u8, f: &[u8]) {
        tracing::trace!(tag = %char::from(t), body = ?String::from_utf8_lossy(&f[..f.len().min(60)]), conn = self.att.lease.conn().id, "client frame");
        if self.att.req_started.is_none() {
            self.att.req_started = Some(Instant::now());
        }
        self.att.answered_at = None;
        match self.att.batch_state {
            BatchState::Refusing if t != tag::SYNC => return,
            // Discarded by the server after the batch's error: forward, owe nothing.
            BatchState::Skipping if t != tag::SYNC => return self.att.sout.extend_from_slice(f),
            _ => {}
        }
        self.att.batch_state = if t == tag::FLUSH { BatchState::Flushed } else { BatchState::Open };
        match t {
            tag::QUERY => self.query(f),
            tag::PARSE => self.parse(f),
            tag::BIND => self.bind(f),
            tag::DESCRIBE => self.describe_or_close(t, f, Expect::Describe),
            tag::CLOSE => self.describe_or_close(t, f, Expect::Close),
            tag::EXECUTE => {
                // Only the unnamed portal's statement is remembered: a named portal may run anything.
                let named_portal = frame::cstr(frame::body(f)).is_none_or(|(portal, _)| !portal.is_empty());
                if named_portal {
                    self.att.lease.conn().taint(Residue::Unknown);
                }
                match self.state.unnamed_portal.clone().filter(|_| !named_portal) {
                    Some(c) => {
                        self.note_statement(&c);
                        self.att.batch_effects.extend(effects(&c));
                    }
                    // A portal whose statement pgshift did not classify: it may run anything.
                    None => self.att.lease.conn().taint(Residue::Unknown),
                }
                self.send(f, Some(Expect::Execute));
            }
            tag::SYNC | tag::FLUSH if self.att.copy_in => self.send(f, None), // ignored in copy-in
            tag::SYNC => {
                let e = std::mem::take(&mut self.att.batch_effects);
                self.att.effects.push_back(e);
                self.send(f, Some(Expect::Sync));
            }
            tag::COPY_DONE | tag::COPY_FAIL => {
                self.att.copy_in = false;
                self.send(f, None);
            }
            tag::FUNCTION_CALL => {
                self.att.lease.conn().taint(fast_path_residue(f));
                self.att.effects.push_back(Vec::new());
                self.att.wrote = true;
                if let Some(cap) = self.att.capture.as_mut() {
                    cap.wrote = true;
                }
                self.send(f, Some(Expect::Query));
            }
            tag::FLUSH | tag::COPY_DATA => self.send(f, None),
            _ => {
                // Forwarded as is, but the server's state after a message we do not know is
                // unknown too: this connection will not serve another client.
                tracing::debug!(tag = %char::from(t), "unknown frontend message forwarded");
                self.att.lease.conn().broken = true;
                self.send(f, None);
            }
        }
    }

    fn send(&mut self, f: &[u8], expect: Option<Expect>) {
        self.att.sout.extend_from_slice(f);
        if let Some(c) = self.att.capture.as_mut() {
            c.push_frames(f, &self.state.settings);
            c.boundaries += u32::from(matches!(expect, Some(Expect::Sync | Expect::Query)));
        }
        // Keep the batch as sent, in case it must be re-run after "cached plan must not change
        // result type" (see reply.rs); a batch that parses or closes statements is not re-run.
        match f.first() {
            Some(&(tag::BIND | tag::DESCRIBE | tag::EXECUTE | tag::FLUSH)) => self.att.batch.extend_from_slice(f),
            Some(&tag::SYNC) => {
                self.att.batch.extend_from_slice(f);
                std::mem::swap(&mut self.att.batch, &mut self.att.last_batch);
                self.att.batch.clear();
                self.att.batch_synced();
            }
            _ => self.att.batch_rerunnable = false,
        }
        if let Some(e) = expect {
            self.att.queue.push(e);
        }
    }

    fn note_statement(&mut self, c: &Classification) {
        if !c.pure() {
            self.att.lease.conn().taint(Residue::Unknown);
        }
        if self.att.queue.is_empty() || self.att.kind == crate::router::StatementKind::Other {
            self.att.kind = c.kind;
        }
        // What a later read must see (read-your-writes) and dual-write replays: anything that may
        // change data. Session/transaction control (but SQL EXECUTE/PREPARE/DECLARE), hints and
        // LISTEN/NOTIFY change none.
        use crate::router::reasons;
        let changes_data = |s: &crate::router::Statement| {
            s.target == Target::Primary
                && (s.runs_sql
                    || ![reasons::TRANSACTION, reasons::SESSION, reasons::EMPTY, reasons::HINT, reasons::LISTEN_NOTIFY]
                        .contains(&s.reason))
        };
        if c.statements.iter().any(changes_data) {
            self.att.wrote = true;
            if let Some(cap) = self.att.capture.as_mut() {
                cap.wrote = true;
            }
        }
        for s in &c.statements {
            if s.reason == reasons::SESSION || s.sets_config || s.session != SessionEffect::None {
                self.att.settings_unsure = true;
            }
            if let SessionEffect::Pin(reason) = s.session {
                if crate::router::LASTING_PINS.contains(&reason) {
                    self.att.lease.conn().taint(Residue::Lasting);
                }
                self.pin(reason);
            }
            if let SessionEffect::Listen { .. } = s.session {
                self.pin("listen");
            }
        }
    }

    fn pin(&mut self, reason: &'static str) {
        if self.transaction_mode && !self.state.pinned {
            self.state.pinned = true;
            self.shared.stats.record_pin(reason);
            tracing::debug!(reason, "client pinned to its server connection");
        }
    }

    fn query(&mut self, f: &[u8]) {
        if !self.att.batch_effects.is_empty() {
            // A Query inside an extended batch not yet synced ends its implicit transaction:
            // the batch's effects take hold without the Sync that would have recorded them.
            self.att.batch_effects.clear();
            self.att.lease.conn().taint(Residue::Unknown);
        }
        let class = match self.state.routed_query.take() {
            Some(c) => c,
            None => {
                // Without replicas or a migration, only session effects matter here: a plain
                // SELECT/INSERT/UPDATE/DELETE has none, and the check is far cheaper than a parse.
                let need_all = self.has_replicas || self.att.capture.is_some();
                let text = frame::cstr(frame::body(f)).map_or(&b""[..], |(t, _)| t);
                let looked = crate::router::plain_statement(text);
                if let Some(kind) = looked.filter(|_| !need_all) {
                    if self.att.queue.is_empty() || self.att.kind == crate::router::StatementKind::Other {
                        self.att.kind = kind;
                    }
                    self.att.effects.push_back(Vec::new());
                    return self.send(f, Some(Expect::Query));
                }
                let Some(sql) = sql_of(tag::QUERY, f) else {
                    self.att.lease.conn().taint(Residue::Unknown);
                    self.att.effects.push_back(Vec::new());
                    return self.send(f, Some(Expect::Query));
                };
                classify_looked(self.shared, self.rt, &sql, looked)
            }
        };
        if let Some(reason) = self.refused(&class) {
            self.att.queue.push(Expect::Synthetic(Synth::Refused(reason)));
            self.att.queue.push(Expect::Synthetic(Synth::Ready));
            return;
        }
        if reserved(&class) {
            // The server raises the error, so a transaction block fails as it would directly.
            let mut q = BytesMut::new();
            crate::wire::messages::put_query(&mut q, RESERVED_REFUSAL);
            self.att.effects.push_back(Vec::new());
            return self.send(&q, Some(Expect::Query));
        }
        if self.deallocate_locally(&class) {
            return;
        }
        self.note_statement(&class);
        self.att.effects.push_back(effects(&class));
        self.send(f, Some(Expect::Query));
    }

    fn refused(&self, class: &Classification) -> Option<&'static str> {
        if !self.transaction_mode || self.rt.config.proxy.session_features != SessionFeatures::Reject {
            return None;
        }
        class.statements.iter().find_map(|s| match s.session {
            SessionEffect::Pin(r) => Some(r),
            SessionEffect::Listen { .. } => Some("LISTEN"),
            _ => None,
        })
    }

    /// `DEALLOCATE name` of a protocol-level statement: the server knows it by another name, so
    /// answer here.
    fn deallocate_locally(&mut self, class: &Classification) -> bool {
        let [stmt] = class.statements.as_slice() else {
            return false;
        };
        let SessionEffect::Deallocate { name: Some(name) } = &stmt.session else {
            return false;
        };
        if self.state.statements.remove(name.as_bytes()).is_none() {
            return false;
        }
        self.att.queue.push(Expect::Synthetic(Synth::CommandComplete("DEALLOCATE")));
        self.att.queue.push(Expect::Synthetic(Synth::Ready));
        true
    }

    fn parse(&mut self, f: &[u8]) {
        let body = frame::body(f);
        let Some((name, tail)) = frame::cstr(body) else {
            return self.send(f, Some(Expect::Parse { stmt: None }));
        };
        let class = match sql_of(tag::PARSE, f) {
            Some(sql) => classify(self.shared, self.rt, &sql),
            None => return self.send(f, Some(Expect::Parse { stmt: None })),
        };
        if reserved(&class) {
            // Prepared as a statement that raises the refusal when it is executed.
            let types = frame::cstr(tail).map_or(&b""[..], |(_, rest)| rest);
            let mut p = BytesMut::new();
            put_frame(&mut p, tag::PARSE, |b| {
                put_cstr(b, name);
                put_cstr(b, RESERVED_REFUSAL.as_bytes());
                b.put_slice(types);
            });
            return self.parse(&p);
        }
        if name.is_empty() || !self.state.track_prepared {
            if !name.is_empty() && self.untracked_named_parse() {
                return;
            }
            self.state.unnamed = name.is_empty().then_some(class);
            if name.is_empty() {
                self.att.unnamed_parsed = true;
                if self.state.track_prepared {
                    self.state.unnamed_parse = Some(f.into());
                }
            }
            return self.send(f, Some(Expect::Parse { stmt: None }));
        }
        let max = self.rt.config.proxy.max_client_prepared_statements;
        if max > 0 && self.state.statements.len() >= max && !self.state.statements.contains_key(name) {
            self.att.queue.push(Expect::Synthetic(Synth::StatementLimit(max)));
            self.att.batch_state = BatchState::Refusing;
            return;
        }
        let scope = super::statements::scope(self.database, self.user, &self.state.settings);
        let def = self.shared.prepared.intern(&scope, tail, || class);
        self.state.statements.insert(bytes::Bytes::copy_from_slice(name), def.clone());
        if let Some(c) = self.att.capture.as_mut() {
            c.defs.push(def.clone());
        }
        let server = &mut self.att.lease.conn().state;
        if server.has_prepared(def.id) {
            self.att.queue.push(Expect::Synthetic(Synth::ParseComplete));
            return;
        }
        self.prepare_on_server(&def, false);
    }

    /// A named Parse untracked (`max_prepared_statements = 0`) stays on the server under the
    /// client's name for the next client to bind or replace: refused (true) or pinned.
    fn untracked_named_parse(&mut self) -> bool {
        if !self.transaction_mode {
            return false;
        }
        if self.rt.config.proxy.session_features == SessionFeatures::Reject {
            self.att.queue.push(Expect::Synthetic(Synth::Refused("a named prepared statement")));
            self.att.batch_state = BatchState::Refusing;
            return true;
        }
        self.pin("protocol_prepare");
        false
    }

    /// Sends a proxy-wide Parse, closing whatever the server's LRU evicts to make room. Parsed
    /// under settings its scope may not show, the server's copy goes with a reset.
    fn prepare_on_server(&mut self, def: &Arc<StmtDef>, silent: bool) {
        if self.att.settings_unsure {
            self.att.lease.conn().taint(Residue::Unknown);
        }
        if let Some(evicted) = self.att.lease.conn().state.add_prepared(def) {
            self.att.sout.extend_from_slice(&close_statement_frame(evicted));
            self.att.queue.push(Expect::SilentClose);
        }
        self.att.sout.extend_from_slice(&def.parse_frame);
        let stmt = def.clone();
        self.att.queue.push(if silent { Expect::SilentParse { stmt } } else { Expect::Parse { stmt: Some(stmt) } });
    }

    /// The unnamed statement lives across requests, which may land on different servers:
    /// repeat the client's last unnamed Parse where this attachment has not sent it.
    /// Before a Bind or Describe of the unnamed statement: the server's must be the client's own.
    /// It is prepared again from the client's last Parse, or, when the client has none, closed:
    /// whatever another client left there must not run or be described for this one (the server
    /// then answers 26000 as it would the client alone).
    fn ensure_unnamed(&mut self) {
        if self.att.unnamed_parsed {
            return;
        }
        match self.state.unnamed_parse.as_ref().filter(|_| self.state.track_prepared) {
            Some(p) => {
                self.att.sout.extend_from_slice(p);
                self.att.queue.push(Expect::SilentUnnamedParse);
            }
            None => {
                self.att.sout.extend_from_slice(&[tag::CLOSE, 0, 0, 0, 6, b'S', 0]);
                self.att.queue.push(Expect::SilentClose);
            }
        }
        self.att.unnamed_parsed = true;
    }

    fn bind(&mut self, f: &[u8]) {
        let body = frame::body(f);
        let parsed = frame::cstr(body).and_then(|(portal, rest)| Some((portal, frame::cstr(rest)?)));
        let Some((portal, (stmt, rest))) = parsed else {
            return self.send(f, Some(Expect::Bind { stmt: None }));
        };
        if stmt.is_empty() {
            self.ensure_unnamed();
        }
        let def =
            if stmt.is_empty() || !self.state.track_prepared { None } else { self.state.statements.get(stmt).cloned() };
        let class = match (&def, stmt.is_empty()) {
            (Some(d), _) => Some(d.class.clone()),
            (None, true) => self.state.unnamed.clone(),
            (None, false) => None,
        };
        if portal.is_empty() {
            self.state.unnamed_portal = class;
        }
        let Some(def) = def else {
            if self.reserved_unknown(stmt) {
                let mut out = BytesMut::with_capacity(f.len() + UNREACHABLE_NAME.len());
                put_frame(&mut out, tag::BIND, |b| {
                    put_cstr(b, portal);
                    put_cstr(b, UNREACHABLE_NAME);
                    b.put_slice(rest);
                });
                return self.send(&out, Some(Expect::Bind { stmt: None }));
            }
            return self.send(f, Some(Expect::Bind { stmt: None }));
        };
        if !self.att.lease.conn().state.has_prepared(def.id) {
            self.prepare_on_server(&def, true);
        }
        let start = self.att.sout.len();
        put_frame(&mut self.att.sout, tag::BIND, |b| {
            put_cstr(b, portal);
            b.put_slice(&def.name);
            b.put_slice(rest);
        });
        let att = &mut *self.att;
        att.batch.extend_from_slice(&att.sout[start..]);
        if let Some(c) = att.capture.as_mut() {
            c.push_frames(&att.sout[start..], &self.state.settings);
            c.defs.push(def.clone());
        }
        att.queue.push(Expect::Bind { stmt: Some(def) });
    }

    fn describe_or_close(&mut self, t: u8, f: &[u8], expect: Expect) {
        let body = frame::body(f);
        let (kind, name) = match body.split_first() {
            Some((&k, rest)) => (k, frame::cstr(rest).map_or(&b""[..], |(n, _)| n)),
            None => return self.send(f, Some(expect)),
        };
        if kind == b'S' && name.is_empty() && t == tag::DESCRIBE {
            self.ensure_unnamed();
        }
        let def = if kind == b'S' && !name.is_empty() && self.state.track_prepared {
            self.state.statements.get(name).cloned()
        } else {
            None
        };
        let Some(def) = def else {
            if kind == b'S' && self.reserved_unknown(name) {
                let mut out = BytesMut::with_capacity(UNREACHABLE_NAME.len() + 8);
                put_frame(&mut out, t, |b| {
                    b.put_u8(b'S');
                    put_cstr(b, UNREACHABLE_NAME);
                });
                return self.send(&out, Some(expect));
            }
            return self.send(f, Some(expect));
        };
        if t == tag::CLOSE {
            // The server copy stays for other clients; only this client's name goes.
            self.state.statements.remove(name);
            self.att.queue.push(Expect::Synthetic(Synth::CloseComplete));
            return;
        }
        if !self.att.lease.conn().state.has_prepared(def.id) {
            self.prepare_on_server(&def, true);
        }
        if let Some(c) = self.att.capture.as_mut() {
            c.defs.push(def.clone());
        }
        let mut out = BytesMut::with_capacity(def.name.len() + 6);
        put_frame(&mut out, t, |b| {
            b.put_u8(b'S');
            b.put_slice(&def.name);
        });
        self.send(&out, Some(expect));
    }
}

/// SQL naming a statement in pgshift's namespace (`PREPARE`/`EXECUTE`/`DEALLOCATE pgshift_...`).
fn reserved(class: &Classification) -> bool {
    class.statements.iter().any(|s| s.session == SessionEffect::ReservedName)
}

/// What runs in place of SQL that names one of pgshift's statements: PostgreSQL raises the error,
/// so the transaction state the client sees is the one it would see for any failed statement.
const RESERVED_REFUSAL: &str = "DO $pgshift$ BEGIN RAISE EXCEPTION USING ERRCODE = '42501', MESSAGE = \
'prepared statement names starting with \"pgshift_\" are reserved by pgshift; choose another name'; END $pgshift$";

/// What a client's Bind, Describe or Close of a name in pgshift's namespace that it did not
/// prepare reaches instead: a name no statement has, so the server answers "does not exist" (or
/// nothing, for Close) and the statements pgshift shares between clients stay out of reach.
const UNREACHABLE_NAME: &[u8] = b"(name reserved by pgshift)";

impl Fwd<'_> {
    /// True if `name` is in pgshift's namespace and this client has no statement of that name.
    fn reserved_unknown(&self, name: &[u8]) -> bool {
        self.state.track_prepared
            && name
                .get(..crate::router::RESERVED_PREFIX.len())
                .is_some_and(|p| p.eq_ignore_ascii_case(crate::router::RESERVED_PREFIX.as_bytes()))
    }
}

/// The session effects a classification carries (all statements, in order).
pub fn effects(c: &Arc<Classification>) -> Vec<SessionEffect> {
    c.statements
        .iter()
        .filter(|s| !matches!(s.session, SessionEffect::None | SessionEffect::Pin(_)))
        .map(|s| s.session.clone())
        .collect()
}

/// What a fast-path FunctionCall may leave: a built-in's (PostgreSQL's own objects have OIDs
/// below 16384) is undone by the reset, except `setseed`'s (OID 1599); an extension's or a
/// user's function may do anything, a dblink connection included, so its server is closed.
fn fast_path_residue(f: &[u8]) -> Residue {
    const SETSEED: u32 = 1599;
    const FIRST_NORMAL_OID: u32 = 16384;
    match frame::body(f).first_chunk::<4>().map(|b| u32::from_be_bytes(*b)) {
        Some(oid) if oid != SETSEED && oid < FIRST_NORMAL_OID => Residue::Unknown,
        _ => Residue::Lasting,
    }
}
