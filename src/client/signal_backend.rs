//! `pg_terminate_backend(pid)` and `pg_cancel_backend(pid)` for the pid a pgshift client got in
//! its BackendKeyData: PostgreSQL knows no such backend, so pgshift answers the call itself and
//! acts on that client (its session closed with 57P01, or its running query cancelled). Pids of
//! real backends (below [`CLIENT_PID_FLOOR`]) go to PostgreSQL as before.
//!
//! Taken: a lone `SELECT pg_terminate_backend(<pid>)` / `SELECT pg_cancel_backend(<pid>)` outside
//! a transaction, as a simple Query or as one extended batch of an unnamed statement
//! (Parse/Bind/[Describe]/Execute/Sync) with the pid as a literal or `$1` (text or binary).

use bytes::{Buf, BufMut, BytesMut};

use super::registry::{SessionHandle, CLIENT_PID_FLOOR};
use super::request::Request;
use super::session::Session;
use crate::wire::{frame, messages, tag};

/// Longest request looked at: the statements taken are short.
const MAX_LEN: usize = 512;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Terminate,
    Cancel,
}

impl Kind {
    fn function(self) -> &'static str {
        match self {
            Kind::Terminate => "pg_terminate_backend",
            Kind::Cancel => "pg_cancel_backend",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Arg {
    Literal(i64),
    Param,
}

/// What the request asks and how to answer it.
struct Call {
    kind: Kind,
    pid: i64,
    /// Extended batch: (Describe present, result in binary).
    extended: Option<(bool, bool)>,
}

/// A cheap look at the raw request (it runs for every short request): does its SQL start with
/// `select pg_`? Only then is it parsed.
pub(super) fn may_signal(req: &[u8]) -> bool {
    let sql = match req.first() {
        Some(&tag::QUERY) => req.get(5..),
        Some(&tag::PARSE) if req.get(5) == Some(&0) => req.get(6..),
        _ => None,
    };
    let Some(sql) = sql else { return false };
    let skip = |s: &[u8]| s.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(s.len());
    let sql = &sql[skip(sql)..];
    if sql.len() < 10 || !sql[..6].eq_ignore_ascii_case(b"select") {
        return false;
    }
    let rest = &sql[6..];
    let rest = &rest[skip(rest)..];
    rest.len() >= 3 && rest[..3].eq_ignore_ascii_case(b"pg_")
}

/// `select pg_terminate_backend(123)` / `SELECT pg_cancel_backend($1::int);` and nothing else.
fn parse_sql(sql: &str) -> Option<(Kind, Arg)> {
    let s: String = sql.chars().filter(|c| !c.is_whitespace()).collect::<String>().to_ascii_lowercase();
    let s = s.trim_end_matches(';');
    let rest = s.strip_prefix("select")?;
    let (kind, rest) =
        [Kind::Terminate, Kind::Cancel].into_iter().find_map(|k| rest.strip_prefix(k.function()).map(|r| (k, r)))?;
    let inner = rest.strip_prefix('(')?.strip_suffix(')')?;
    let inner = ["::integer", "::int4", "::int8", "::bigint", "::int"]
        .iter()
        .find_map(|c| inner.strip_suffix(c))
        .unwrap_or(inner);
    match inner {
        "$1" => Some((kind, Arg::Param)),
        n if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => n.parse().ok().map(|p| (kind, Arg::Literal(p))),
        _ => None,
    }
}

/// The one parameter of a Bind of the unnamed statement, and whether results are binary.
fn bind_param(body: &[u8], param_type: u32) -> Option<(i64, bool)> {
    let (_portal, rest) = frame::cstr(body)?;
    let (stmt, mut b) = frame::cstr(rest)?;
    if !stmt.is_empty() || b.remaining() < 2 {
        return None;
    }
    let nfmt = b.get_i16();
    let mut binary = false;
    for _ in 0..nfmt {
        binary = (b.remaining() >= 2).then(|| b.get_i16() == 1)?;
    }
    if b.remaining() < 6 || b.get_i16() != 1 {
        return None;
    }
    let len = usize::try_from(b.get_i32()).ok()?;
    let value = b.get(..len)?;
    b.advance(len);
    let pid = match (binary, len) {
        (false, _) => std::str::from_utf8(value).ok()?.trim().parse().ok()?,
        (true, 4) if matches!(param_type, 0 | 23) => i64::from(i32::from_be_bytes(value.try_into().ok()?)),
        (true, 8) if matches!(param_type, 0 | 20) => i64::from_be_bytes(value.try_into().ok()?),
        _ => return None,
    };
    let nres = (b.remaining() >= 2).then(|| b.get_i16())?;
    let result_binary = nres > 0 && b.remaining() >= 2 && b.get_i16() == 1;
    Some((pid, result_binary))
}

impl Session {
    /// Answers the request here if it signals a pgshift client; false to send it on.
    pub(super) async fn signal_client_locally(&mut self, req: Request) -> bool {
        if !self.state.tx_status.is_idle() || req.terminate || req.len == 0 || req.len > MAX_LEN {
            return false;
        }
        let Some(call) = self.signal_call(&self.cin[..req.len]) else { return false };
        if call.pid < i64::from(CLIENT_PID_FLOOR) || call.pid > i64::from(i32::MAX) {
            return false;
        }
        let target = self.shared.sessions.get(call.pid as i32);
        let answer = match &target {
            None => Some(false),
            Some(t) if *t.user != *self.user.name && !self.is_admin() => None,
            Some(t) => Some(self.act(call.kind, t).await),
        };
        self.cin.advance(req.len);
        self.answer(&call, answer);
        true
    }

    fn signal_call(&self, f: &[u8]) -> Option<Call> {
        let (t, n) = frame::complete_frame(f).ok()??;
        if t == tag::QUERY && n == f.len() {
            let sql = frame::cstr(frame::body(&f[..n]))?.0;
            let (kind, Arg::Literal(pid)) = parse_sql(std::str::from_utf8(sql).ok()?)? else { return None };
            return Some(Call { kind, pid, extended: None });
        }
        let mut frames = Vec::new();
        let mut at = 0;
        while let Ok(Some((t, n))) = frame::complete_frame(&f[at..]) {
            frames.push((t, frame::body(&f[at..at + n])));
            at += n;
        }
        let describe = match frames.iter().map(|(t, _)| *t).collect::<Vec<_>>().as_slice() {
            [tag::PARSE, tag::BIND, tag::EXECUTE, tag::SYNC] => false,
            [tag::PARSE, tag::BIND, tag::DESCRIBE, tag::EXECUTE, tag::SYNC] => true,
            _ => return None,
        };
        let (name, tail) = frame::cstr(frames[0].1)?;
        let (sql, mut types) = frame::cstr(tail)?;
        let param_type = match types.remaining() {
            2.. if types.get_i16() == 1 && types.remaining() >= 4 => types.get_u32(),
            _ => 0,
        };
        if !name.is_empty() || at != f.len() {
            return None;
        }
        let (kind, arg) = parse_sql(std::str::from_utf8(sql).ok()?)?;
        let (pid, binary) = match arg {
            Arg::Literal(p) => (p, false),
            Arg::Param => bind_param(frames[1].1, param_type)?,
        };
        Some(Call { kind, pid, extended: Some((describe, binary)) })
    }

    fn is_admin(&self) -> bool {
        self.rt.config.admin.admin_users.iter().any(|u| *u == self.user.name)
    }

    /// Terminates or cancels `t`; true as PostgreSQL's function returns.
    async fn act(&self, kind: Kind, t: &SessionHandle) -> bool {
        match kind {
            Kind::Terminate => {
                tracing::info!(client = t.id, by = self.handle.id, "pg_terminate_backend on a pgshift client");
                t.signals.raise(super::registry::Signals::KILL);
            }
            Kind::Cancel => {
                let wait = self.rt.config.proxy.cancel_wait_timeout.enabled();
                let wait = wait.unwrap_or(std::time::Duration::from_secs(10));
                self.shared.sessions.cancel(t.key.0, t.key.1, wait).await;
            }
        }
        true
    }

    /// The function's one-row result, PostgreSQL's warning for an unknown pid, or its refusal.
    fn answer(&mut self, call: &Call, result: Option<bool>) {
        let out = &mut self.cout;
        let Some(ok) = result else {
            let what = if call.kind == Kind::Terminate { "terminate" } else { "cancel" };
            if call.extended.is_some() {
                messages::put_empty(out, tag::PARSE_COMPLETE);
            }
            out.extend_from_slice(&messages::error_response(
                "ERROR",
                "42501",
                &format!("permission denied to {what} process: it belongs to another role"),
            ));
            return messages::put_ready_for_query(out, crate::wire::TxStatus::Idle);
        };
        if !ok {
            out.extend_from_slice(&messages::notice_response(
                "WARNING",
                "01000",
                &format!("PID {} is not a PostgreSQL backend process", call.pid),
            ));
        }
        let (describe, binary) = match call.extended {
            Some((d, b)) => {
                messages::put_empty(out, tag::PARSE_COMPLETE);
                messages::put_empty(out, tag::BIND_COMPLETE);
                (d, b)
            }
            None => (true, false),
        };
        if describe {
            put_bool_description(out, call.kind.function(), binary);
        }
        messages::put_frame(out, tag::DATA_ROW, |b| {
            b.put_i16(1);
            b.put_i32(1);
            b.put_u8(match (binary, ok) {
                (true, v) => u8::from(v),
                (false, true) => b't',
                (false, false) => b'f',
            });
        });
        messages::put_command_complete(out, "SELECT 1");
        messages::put_ready_for_query(out, crate::wire::TxStatus::Idle);
    }
}

/// RowDescription of one `bool` column.
fn put_bool_description(out: &mut BytesMut, name: &str, binary: bool) {
    messages::put_frame(out, tag::ROW_DESCRIPTION, |b| {
        b.put_i16(1);
        messages::put_cstr(b, name.as_bytes());
        b.put_u32(0);
        b.put_i16(0);
        b.put_u32(16); // bool
        b.put_i16(1);
        b.put_i32(-1);
        b.put_i16(i16::from(binary));
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_raw_look_is_narrow() {
        let q = |sql: &str| {
            let mut b = BytesMut::new();
            messages::put_query(&mut b, sql);
            b
        };
        assert!(may_signal(&q("SELECT pg_terminate_backend(5000000)")));
        assert!(may_signal(&q("  select\n  PG_cancel_backend($1)")));
        assert!(!may_signal(&q("SELECT abalance FROM pgbench_accounts WHERE aid = 1")));
        assert!(!may_signal(&q("select")));
    }

    #[test]
    fn only_the_bare_calls_are_taken() {
        assert_eq!(parse_sql("SELECT pg_terminate_backend(4194305)"), Some((Kind::Terminate, Arg::Literal(4194305))));
        assert_eq!(parse_sql(" select pg_cancel_backend( $1::int ) ;"), Some((Kind::Cancel, Arg::Param)));
        assert_eq!(parse_sql("select pg_terminate_backend($1)"), Some((Kind::Terminate, Arg::Param)));
        assert_eq!(parse_sql("select pg_terminate_backend(pid) from pg_stat_activity"), None);
        assert_eq!(parse_sql("select pg_terminate_backend(1), 2"), None);
        assert_eq!(parse_sql("select pg_terminate_backend(-5)"), None);
    }
}
