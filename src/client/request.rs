//! Finding where a client's next request ends, and what it says about routing.
//!
//! Between transactions the session buffers client frames up to a request boundary (Query, Sync,
//! Flush, FunctionCall, Terminate) before choosing a server: an extended-protocol batch is routed
//! as a whole, so a write anywhere in it keeps it on the primary.

use std::borrow::Cow;
use std::sync::Arc;

use super::expect::Expect;
use super::state::{Attached, BatchState, ClientState};
use crate::router::{Classification, StatementKind};
use crate::shared::{Runtime, Shared};
use crate::wire::{frame, tag, WireError};

/// Past this many buffered bytes without a boundary, route with what has arrived.
const MAX_GATHER: usize = 64 * 1024;

/// A simple Query longer than this is not buffered whole: it goes to the primary unclassified and
/// streams through as it arrives (see [`stream_query`]), so one huge statement costs the
/// proxy a few buffers, not its size.
pub const STREAM_QUERY_OVER: usize = 1024 * 1024;

/// A request found at the front of the client's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// Bytes of whole frames it spans.
    pub len: usize,
    /// True if it is only a Terminate.
    pub terminate: bool,
    /// True if it ends at a boundary; false for whole frames with no boundary (yet). A client
    /// may legitimately stop there and wait (Bind + Execute of a COPY gets CopyInResponse
    /// without Sync), so the session routes such a request once the client sends nothing more.
    pub complete: bool,
}

/// Looks for a request at the front of `buf`; `Ok(None)` means not even one whole frame.
pub fn scan(buf: &[u8], max_packet: usize) -> Result<Option<Request>, WireError> {
    let mut at = 0;
    let partial = |at: usize| (at > 0).then_some(Request { len: at, terminate: false, complete: false });
    loop {
        let Some((t, total)) = frame::peek_header(&buf[at..])? else {
            return Ok(partial(at));
        };
        if !frame::is_frontend_tag(t) {
            return Err(WireError::UnknownMessage(t));
        }
        if total > max_packet {
            return Err(WireError::TooLarge { len: total, max: max_packet });
        }
        if buf.len() - at < total {
            if at == 0 && t == tag::QUERY && total > STREAM_QUERY_OVER {
                // Routed before any of its text is looked at; `len` 0 says "streams".
                return Ok(Some(Request { len: 0, terminate: false, complete: true }));
            }
            // A huge frame is routed once what precedes it is here; it streams after.
            let routable = at >= MAX_GATHER || total > MAX_GATHER;
            return Ok(partial(at).map(|r| Request { complete: routable, ..r }));
        }
        if t == tag::TERMINATE && at == 0 {
            return Ok(Some(Request { len: total, terminate: true, complete: true }));
        }
        at += total;
        let boundary = matches!(t, tag::QUERY | tag::SYNC | tag::FLUSH | tag::FUNCTION_CALL | tag::TERMINATE);
        if boundary || at >= MAX_GATHER {
            return Ok(Some(Request { len: at, terminate: false, complete: true }));
        }
    }
}

/// True if the request runs something (Query, Execute, FunctionCall) rather than only
/// preparing or describing statements.
pub fn executes(req: &[u8]) -> bool {
    let mut at = 0;
    while let Ok(Some((t, total))) = frame::complete_frame(&req[at..]) {
        if matches!(t, tag::QUERY | tag::EXECUTE | tag::FUNCTION_CALL) {
            return true;
        }
        at += total;
    }
    false
}

/// The text of a Query frame, or of the query in a Parse frame (lossy: routing only reads
/// keywords, and the forwarded bytes are never the decoded text).
pub fn sql_of(t: u8, f: &[u8]) -> Option<Cow<'_, str>> {
    let body = frame::body(f);
    let text = match t {
        tag::QUERY => frame::cstr(body)?.0,
        tag::PARSE => {
            let (_, rest) = frame::cstr(body)?;
            frame::cstr(rest)?.0
        }
        _ => return None,
    };
    // Valid UTF-8 (the usual case) borrows; only other encodings pay for the lossy copy.
    Some(match std::str::from_utf8(text) {
        Ok(s) => Cow::Borrowed(s),
        Err(_) => String::from_utf8_lossy(text),
    })
}

/// Classifies SQL through the shared cache.
pub fn classify(shared: &Shared, rt: &Runtime, sql: &str) -> Arc<Classification> {
    shared.classify_cache.classify(sql, &rt.classifier)
}

/// Classifies a simple-query text. A plain one ([`crate::router::plain_class`]) needs no parse.
/// Other texts usually carry their literals, so each is new and caching it would only cost an
/// insertion and evict the statements worth keeping; a text with no digit, quote or dollar sign
/// (BEGIN, COMMIT, SHOW x, a query without literals) has none and comes back, so it goes through
/// the cache.
pub fn classify_query(shared: &Shared, rt: &Runtime, sql: &str) -> Arc<Classification> {
    classify_looked(shared, rt, sql, crate::router::plain_statement(sql.as_bytes()))
}

/// [`classify_query`] with the quick look's verdict on the text already at hand.
pub fn classify_looked(shared: &Shared, rt: &Runtime, sql: &str, looked: Option<StatementKind>) -> Arc<Classification> {
    // The common read or write (`SELECT a FROM t WHERE id = 42`) is proven one without a parse.
    let plain = looked.and_then(|kind| crate::router::plain_class_of(sql.as_bytes(), kind));
    if let Some(class) = plain.and_then(|kind| shared.classify_cache.plain(kind)) {
        return class;
    }
    let literal_free = !sql.bytes().any(|b| b.is_ascii_digit() || matches!(b, b'\'' | b'$'));
    if literal_free {
        classify(shared, rt, sql)
    } else {
        Arc::new(crate::router::classify(sql, &rt.classifier))
    }
}

/// The classifications of every statement the request runs, in order: Query and Parse texts,
/// and the statements named by Bind.
pub fn classifications(shared: &Shared, rt: &Runtime, state: &ClientState, req: &[u8]) -> Vec<Arc<Classification>> {
    let mut out = Vec::new();
    let mut at = 0;
    while let Ok(Some((t, total))) = frame::complete_frame(&req[at..]) {
        let f = &req[at..at + total];
        at += total;
        match t {
            tag::QUERY => {
                if let Some(sql) = sql_of(t, f) {
                    out.push(classify_query(shared, rt, &sql));
                }
            }
            tag::PARSE => {
                if let Some(sql) = sql_of(t, f) {
                    out.push(classify(shared, rt, &sql));
                }
            }
            tag::BIND => {
                let stmt = frame::cstr(frame::body(f)).and_then(|(_, rest)| frame::cstr(rest)).map(|(s, _)| s);
                match stmt {
                    Some(b"") | None => out.extend(state.unnamed.clone()),
                    Some(name) => out.extend(state.statements.get(name).map(|d| d.class.clone())),
                }
            }
            _ => {}
        }
    }
    out
}

/// Starts streaming a simple Query too large to buffer, if this attachment allows it (a primary,
/// no dual-write capture, no error pending in the batch): notes what forwarding it owes, since the
/// frame never goes through `Fwd`. Unclassified, it may write and may change the session.
pub fn stream_query(att: &mut Attached) -> bool {
    let refused_or_skipped = matches!(att.batch_state, BatchState::Skipping | BatchState::Refusing);
    if att.target != crate::router::Target::Primary || att.capture.is_some() || refused_or_skipped {
        return false;
    }
    att.req_started.get_or_insert_with(std::time::Instant::now);
    att.batch_state = BatchState::Open;
    att.batch_rerunnable = false;
    att.wrote = true;
    // Unread, it may even have left what no reset undoes (see router::LASTING_PINS).
    att.lease.conn().taint(crate::server::Residue::Lasting);
    att.effects.push_back(Vec::new());
    att.queue.push(Expect::Query);
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;

    fn q(sql: &str) -> BytesMut {
        let mut b = BytesMut::new();
        crate::wire::messages::put_query(&mut b, sql);
        b
    }

    #[test]
    fn finds_boundaries() {
        let mut buf = q("select 1");
        let one = buf.len();
        buf.extend_from_slice(&q("select 2"));
        assert_eq!(scan(&buf, usize::MAX).unwrap(), Some(Request { len: one, terminate: false, complete: true }));
        assert_eq!(scan(&buf[..one - 1], usize::MAX).unwrap(), None);
        assert_eq!(
            scan(b"X\0\0\0\x04", usize::MAX).unwrap(),
            Some(Request { len: 5, terminate: true, complete: true })
        );
        // Parse without Sync: whole frames, no boundary yet
        let ext = b"P\0\0\0\x09\0x\0\0\0";
        assert_eq!(scan(ext, usize::MAX).unwrap(), Some(Request { len: 10, terminate: false, complete: false }));
    }
}
